//! `maskstream bench --streams 1,2,4`: N live test cameras at once through the full pipeline (decode →
//! batched inference → tracking → null sink), each N with cross-stream batching (up to N frames per
//! model call) and without (one frame per call): aggregate frames/s, frames dropped because inference
//! was behind, and frame latency (decoded → handed to the outputs) p50/p99 over every stream's frames.

use std::path::Path;

use anyhow::Context;
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::{self, Models, RunContext};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Row {
    pub streams: usize,
    pub max_batch: usize,
    pub seconds: f64,
    pub frames: u64,
    pub fps: f64,
    pub dropped_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Frames per model call, on average.
    pub mean_batch: f64,
}

/// Frame rate of each test camera.
const CAMERA_FPS: u64 = 15;

pub fn run(
    base: &PipelineConfig,
    mut model: Models,
    counts: &[usize],
    secs: u64,
) -> anyhow::Result<Vec<Row>> {
    println!(
        "streams: N live test cameras ({CAMERA_FPS} frames/s, 640x360, {secs} s each), full pipeline, \
         with and without cross-stream batching"
    );
    println!(
        "  {:>7} {:>9} {:>9} {:>10} {:>8} {:>11} {:>11} {:>10}",
        "streams",
        "max_batch",
        "frames",
        "frames/s",
        "dropped",
        "lat p50 ms",
        "lat p99 ms",
        "mean batch"
    );
    let mut rows = Vec::new();
    for &n in counts {
        let mut modes = vec![n.min(8)];
        if n > 1 {
            modes.push(1);
        }
        for max_batch in modes {
            let mut cfg = base.clone();
            cfg.sources = (0..n)
                .map(|i| SourceConfig {
                    name: Some(format!("cam{i}")),
                    max_frames: Some(secs * CAMERA_FPS),
                    ..SourceConfig::new(format!("test://ball?fps={CAMERA_FPS}"))
                })
                .collect();
            cfg.inference.max_batch = Some(max_batch);
            let (summary, m) = pipeline::run_with(&cfg, model, RunContext::default())
                .with_context(|| format!("{n} streams, max_batch {max_batch}"))?;
            model = m;
            let decoded: u64 = summary.sources.iter().map(|s| s.frames).sum();
            let dropped: u64 = summary.sources.iter().map(|s| s.dropped).sum();
            let (p50, p99) = summary.stages.percentiles("latency").unwrap_or((0.0, 0.0));
            let calls: u64 = summary.stages.batch_calls().values().sum();
            let row = Row {
                streams: n,
                max_batch,
                seconds: summary.elapsed.as_secs_f64(),
                frames: summary.frames,
                fps: summary.fps(),
                dropped_pct: 100.0 * dropped as f64 / decoded.max(1) as f64,
                latency_p50_ms: p50,
                latency_p99_ms: p99,
                mean_batch: summary.frames as f64 / calls.max(1) as f64,
            };
            println!(
                "  {:>7} {:>9} {:>9} {:>10.2} {:>7.0}% {:>11.1} {:>11.1} {:>10.2}",
                row.streams,
                row.max_batch,
                row.frames,
                row.fps,
                row.dropped_pct,
                row.latency_p50_ms,
                row.latency_p99_ms,
                row.mean_batch
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The pipeline settings of the bench: engine, backend, precision and threads, tracking on, no
/// outputs.
pub fn base_config(engine: &Path, args: &super::bench::Args) -> PipelineConfig {
    let mut cfg = PipelineConfig {
        engine: engine.to_path_buf(),
        backend: args.backend,
        precision: args.precision,
        threads: args.threads,
        ..Default::default()
    };
    cfg.inference.workers = args.workers;
    cfg
}
