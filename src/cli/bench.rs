//! `maskstream bench`: model-only throughput on a fixed set of decoded frames (per-stage ms, frames/s,
//! peak RSS), then the full pipeline on the same video with a null sink, and the pipeline overhead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use maskstream::overlay::{Canvas, Compositor, OverlayStyle};
use maskstream::pipeline::config::{InferenceConfig, SourceConfig, SourceKind};
use maskstream::pipeline::source::{self, SourceEvent};
use maskstream::pipeline::stats::process_cpu;
use maskstream::pipeline::workers::on_pool;
use maskstream::pipeline::{self, Models, RunContext, WARM_UP_CALLS};
use maskstream::{BackendKind, BackendOptions, Detection, MaskRcnn, RgbFrame, StageTimes};
use serde::Serialize;

use super::bench_streams::base_config;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// Frames timed (after 3 warm-up frames).
    #[arg(long, default_value_t = 60)]
    pub frames: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// FP32 or INT8 graphs; auto: the engine's CPU default (INT8 when it has one) on CPU, FP32 on GPUs.
    #[arg(long, value_enum, default_value_t = maskstream::Precision::Auto)]
    pub precision: maskstream::Precision,
    /// Inference threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Let ONNX Runtime's idle threads spin (off by default; for comparison).
    #[arg(long)]
    pub ort_spinning: bool,
    /// Without ONNX Runtime's CPU memory arena (on by default; for comparison).
    #[arg(long)]
    pub no_ort_arena: bool,
    /// Frames per model call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Model calls in flight at once, each on its own copy of the model with an equal share of the
    /// threads (0: automatic, 2 on the CPU with 2 threads or more; 1: one frame at a time).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Video whose first frames are used.
    #[arg(long, default_value = "assets/shapes-demo.mp4")]
    pub video: PathBuf,
    /// Skip the full-pipeline run.
    #[arg(long)]
    pub model_only: bool,
    /// Also time the full pipeline writing the annotated MP4 (H.264, drawing included) and JSON Lines,
    /// as `run --output --json` does (into a temporary folder, removed after).
    #[arg(long)]
    pub encode: bool,
    /// Rounds of (model at the pipeline's floor, pipeline runs) back to back; the overheads are the
    /// medians of each round's ratios, so a slower or faster spell of a shared machine falls on both
    /// sides of a ratio.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Also run N live test cameras at once through the full pipeline, for each N listed (e.g.
    /// 1,2,4), with and without cross-stream batching.
    #[arg(long, value_delimiter = ',')]
    pub streams: Vec<usize>,
    /// Seconds of each camera in the --streams runs.
    #[arg(long, default_value_t = 20)]
    pub stream_secs: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    engine: String,
    backend: String,
    precision: String,
    threads: usize,
    workers: usize,
    batch: usize,
    frames: usize,
    width: usize,
    height: usize,
    model_fps: f64,
    model_ms_per_frame: f64,
    /// The model alone skipping masks under the pipeline's detection floor: what the overheads
    /// compare against.
    model_fps_at_floor: Option<f64>,
    /// Process CPU time a frame (all threads) of the model alone at the floor, and of the pipeline
    /// runs (medians): what the pipeline's own work costs, whatever else the machine runs.
    model_cpu_ms_at_floor: Option<f64>,
    pipeline_cpu_ms: Option<f64>,
    encode_cpu_ms: Option<f64>,
    stages_ms: Vec<(String, f64)>,
    peak_rss_mb: f64,
    /// Steady state (after the warm-up calls, as the model-only figures), and the overhead against
    /// the model at the floor.
    pipeline_fps: Option<f64>,
    pipeline_overhead: Option<f64>,
    /// Each round's overhead (the figure above is their median).
    pipeline_overhead_rounds: Vec<f64>,
    /// The whole run: start-up, warm-up and closing the outputs included.
    pipeline_whole_run_fps: Option<f64>,
    encode_fps: Option<f64>,
    encode_overhead: Option<f64>,
    encode_overhead_rounds: Vec<f64>,
    encode_whole_run_fps: Option<f64>,
    streams: Vec<super::bench_streams::Row>,
}

/// Decodes the first `n` frames of a video into memory.
pub fn decode_frames(
    video: &std::path::Path,
    n: usize,
) -> anyhow::Result<Vec<(usize, usize, Vec<u8>)>> {
    gstreamer::init()?;
    let stop = Arc::new(AtomicBool::new(false));
    let spec = source::SourceSpec {
        max_frames: Some(n as u64),
        capacity: 8,
        ..source::SourceSpec::new(
            0,
            "bench".into(),
            SourceKind::File(video.to_path_buf()),
            &SourceConfig::new(video.display().to_string()),
        )
    };
    let h = source::spawn(spec, stop)?;
    let mut frames = Vec::with_capacity(n);
    for ev in h.rx.iter() {
        match ev {
            SourceEvent::Frame(f) => frames.push((f.width, f.height, f.data)),
            SourceEvent::End { error: Some(e), .. } => bail!("{}: {e}", video.display()),
            SourceEvent::End { .. } => break,
        }
    }
    let _ = h.thread.join();
    if frames.is_empty() {
        bail!("{}: no frames decoded", video.display());
    }
    Ok(frames)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let engine = args.engine.clone().unwrap_or_else(super::default_engine);
    let batch = args.batch.max(1);
    if let Some(n) = args.streams.iter().find(|&&n| n == 0 || n > 64) {
        bail!("--streams: {n} is outside 1..64");
    }
    // the same warm-up as the pipeline's steady state leaves out, so the two figures compare
    let warm_up = WARM_UP_CALLS as usize * batch;
    let frames = decode_frames(&args.video, args.frames + warm_up)?;
    let opts = BackendOptions {
        kind: args.backend,
        threads: args.threads,
        spinning: args.ort_spinning,
        cpu_arena: !args.no_ort_arena,
        precision: args.precision,
        ..Default::default()
    };
    let mut model = Models::load(&engine, &opts, args.workers)
        .with_context(|| format!("loading {}", engine.display()))?;
    let views: Vec<RgbFrame<'_>> = frames
        .iter()
        .map(|(w, h, d)| RgbFrame::new(*w, *h, w * 3, d))
        .collect::<Result<_, _>>()?;
    let warm_up = warm_up.min(views.len().saturating_sub(1));
    for m in model.as_mut_slice() {
        for chunk in views[..warm_up].chunks(batch) {
            m.detect_batch(chunk)?;
        }
    }
    let timed = &views[warm_up..];
    let Timed {
        stages: stage_sum,
        overlay,
        model: model_time,
        frames: n,
        ..
    } = time_model(&mut model, timed, batch)?;
    let model_secs = model_time.as_secs_f64();
    let model_fps = n as f64 / model_secs;
    let mut stages: Vec<(String, f64)> = stage_sum
        .iter()
        .chain([("overlay", overlay)])
        .map(|(name, d)| (name.to_string(), d.as_secs_f64() * 1e3 / n as f64))
        .collect();
    // tracker + zones + lines + events at 20 objects (a synthetic scene: the demo has only a few)
    stages.push((
        "track".to_string(),
        maskstream::analytics::bench::ms_per_frame(20, 300),
    ));
    let (w, h) = (frames[0].0, frames[0].1);
    let model_precision = model.first().precision();
    let workers = model.workers();
    println!(
        "model-only: {} frames {w}x{h}, batch {batch}, {} backend, {model_precision}, {} threads, {}: {model_fps:.2} frames/s ({:.1} ms/frame)",
        n,
        model.first().provider(),
        if args.threads == 0 { "all".to_string() } else { args.threads.to_string() },
        if workers == 1 {
            "1 worker".to_string()
        } else {
            format!("{workers} workers of {} thread(s)", model.threads_per_worker())
        },
        1e3 / model_fps
    );
    if workers > 1 {
        println!("  (stage times below are per frame on one worker: frames overlap, so they add up to more than the wall time)");
    }
    for (name, ms) in &stages {
        println!("  {name:<15} {ms:>8.2} ms/frame");
    }
    let rss = peak_rss_mb();
    println!("  peak RSS       {rss:>8.1} MB");
    // The pipeline skips the masks of detections under its floor (the tracker's low threshold);
    // the model alone at that floor does the same work, so the pipeline's overhead is measured
    // against it. The figure above stays torchvision's full output (every detection >= 0.05).
    let floor = base_config(&engine, &args).detection_floor();
    let mut model_at_floor = || -> anyhow::Result<(f64, f64)> {
        model.set_min_score(floor);
        let t = time_model(&mut model, timed, batch)?;
        model.set_min_score(0.0);
        let fps = t.frames as f64 / t.model.as_secs_f64();
        let cpu_ms = t.cpu.as_secs_f64() * 1e3 / t.frames.max(1) as f64;
        println!(
            "model-only at the pipeline's detection floor ({floor}: no mask under it): {fps:.2} frames/s, {cpu_ms:.1} ms CPU a frame"
        );
        Ok((fps, cpu_ms))
    };
    // Round by round: the model alone at the floor, then the pipeline runs, each against it.
    let mut rounds: Vec<Round> = Vec::new();
    if !args.model_only {
        for _ in 0..args.rounds.max(1) {
            let (floor_fps, floor_cpu_ms) = model_at_floor()?;
            let plain = run_pipeline(&args, &engine, batch, frames.len(), floor_fps, false)?;
            let encoded = if args.encode {
                Some(run_pipeline(
                    &args,
                    &engine,
                    batch,
                    frames.len(),
                    floor_fps,
                    true,
                )?)
            } else {
                None
            };
            rounds.push(Round {
                floor_fps,
                floor_cpu_ms,
                plain,
                encoded,
            });
        }
    }
    let streams = if args.streams.is_empty() {
        drop(model);
        Vec::new()
    } else {
        let base = base_config(&engine, &args);
        super::bench_streams::run(&base, model, &args.streams, args.stream_secs)?
    };

    let plain: Vec<PipelineRun> = rounds.iter().map(|r| r.plain).collect();
    let encoded: Vec<PipelineRun> = rounds.iter().filter_map(|r| r.encoded).collect();
    let floor_fps = median(rounds.iter().map(|r| r.floor_fps));
    if rounds.len() > 1 {
        let show = |runs: &[PipelineRun]| {
            let o: Vec<String> = runs
                .iter()
                .map(|r| format!("{:+.1}%", r.overhead * 1e2))
                .collect();
            o.join(" ")
        };
        println!(
            "{} rounds: overhead JSON only {} (median {:+.1}%)",
            rounds.len(),
            show(&plain),
            median(plain.iter().map(|r| r.overhead)).unwrap_or(f64::NAN) * 1e2
        );
        if !encoded.is_empty() {
            println!(
                "{} rounds: overhead with MP4 {} (median {:+.1}%)",
                rounds.len(),
                show(&encoded),
                median(encoded.iter().map(|r| r.overhead)).unwrap_or(f64::NAN) * 1e2
            );
        }
    }
    if let Some(path) = &args.json {
        let report = Report {
            engine: engine.display().to_string(),
            backend: args.backend.to_string(),
            precision: model_precision.to_string(),
            threads: args.threads,
            workers,
            batch,
            frames: n,
            width: w,
            height: h,
            model_fps,
            model_ms_per_frame: 1e3 / model_fps,
            model_fps_at_floor: floor_fps,
            model_cpu_ms_at_floor: median(rounds.iter().map(|r| r.floor_cpu_ms)),
            pipeline_cpu_ms: median(plain.iter().filter_map(|r| r.cpu_ms)),
            encode_cpu_ms: median(encoded.iter().filter_map(|r| r.cpu_ms)),
            stages_ms: stages,
            peak_rss_mb: rss,
            pipeline_fps: median(plain.iter().map(|r| r.fps)),
            pipeline_overhead: median(plain.iter().map(|r| r.overhead)),
            pipeline_overhead_rounds: plain.iter().map(|r| r.overhead).collect(),
            pipeline_whole_run_fps: median(plain.iter().map(|r| r.whole_fps)),
            encode_fps: median(encoded.iter().map(|r| r.fps)),
            encode_overhead: median(encoded.iter().map(|r| r.overhead)),
            encode_overhead_rounds: encoded.iter().map(|r| r.overhead).collect(),
            encode_whole_run_fps: median(encoded.iter().map(|r| r.whole_fps)),
            streams,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// What [`time_model`] measured: the first frame's stage sums per call, the drawing, the model's
/// wall and process CPU time (drawing left out of both), and the frames.
struct Timed {
    stages: StageTimes,
    overlay: Duration,
    model: Duration,
    cpu: Duration,
    frames: usize,
}

/// A frame's index and the detections drawn on it.
type Kept = (usize, Vec<Detection>);

/// Times the model over `timed` in batches of `batch` (on every worker at once, a batch to
/// whichever is free), then the compositor's drawing of what it found, apart (left out of the
/// model's time), on a copy of each frame.
fn time_model(models: &mut Models, timed: &[RgbFrame<'_>], batch: usize) -> anyhow::Result<Timed> {
    let chunks: Vec<&[RgbFrame<'_>]> = timed.chunks(batch).collect();
    let threshold = InferenceConfig::default().score_threshold;
    let next = AtomicUsize::new(0);
    // each worker: its calls' first-frame stage sums, and the kept detections of each frame it ran
    let run = |model: &mut MaskRcnn| -> anyhow::Result<(StageTimes, Vec<Kept>)> {
        let (mut stages, mut kept) = (StageTimes::default(), Vec::new());
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = chunks.get(i) else { break };
            let r = model.detect_batch(chunk)?;
            if let Some(first) = r.first() {
                stages += first.times;
            }
            for (k, dets) in r.into_iter().enumerate() {
                let d = dets.detections.into_iter().filter(|d| d.score >= threshold);
                kept.push((i * batch + k, d.collect()));
            }
        }
        Ok((stages, kept))
    };
    let threads = models.threads_per_worker();
    let (start, cpu_start) = (Instant::now(), process_cpu());
    let per_worker: Vec<anyhow::Result<_>> = match models.as_mut_slice() {
        [one] => vec![run(one)],
        many => std::thread::scope(|s| {
            let handles: Vec<_> = many
                .iter_mut()
                .enumerate()
                .map(|(i, m)| {
                    let run = &run;
                    s.spawn(move || on_pool(threads, &format!("bench-{i}"), || run(m)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))
                })
                .collect()
        }),
    };
    let model_time = start.elapsed();
    let cpu = process_cpu()
        .zip(cpu_start)
        .map_or(Duration::ZERO, |(after, before)| {
            after.saturating_sub(before)
        });
    let (mut stage_sum, mut kept) = (StageTimes::default(), Vec::new());
    for r in per_worker {
        let (stages, k) = r?;
        stage_sum += stages;
        kept.extend(k);
    }
    let compositor = Compositor::new(OverlayStyle::default());
    let (mut overlay, mut canvas) = (Duration::ZERO, Vec::new());
    let classes = models.first().classes();
    for (i, dets) in &kept {
        let frame = &timed[*i];
        canvas.clear();
        canvas.extend_from_slice(frame.data);
        let t = Instant::now();
        compositor.draw(
            &mut Canvas {
                data: &mut canvas,
                width: frame.width,
                height: frame.height,
                stride: frame.stride,
            },
            dets,
            classes,
        );
        overlay += t.elapsed();
    }
    Ok(Timed {
        stages: stage_sum,
        overlay,
        model: model_time,
        cpu,
        frames: kept.len(),
    })
}

/// One round: the model alone at the pipeline's floor, then the pipeline (and with `--encode` the
/// pipeline writing MP4), each against it.
struct Round {
    floor_fps: f64,
    /// Process CPU time a frame of the model alone at the floor (all threads).
    floor_cpu_ms: f64,
    plain: PipelineRun,
    encoded: Option<PipelineRun>,
}

/// The median (the mean of the middle two for an even count); None for no values.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// A full-pipeline run: steady-state frames/s and its overhead against the model alone at the
/// pipeline's floor (both leave out the warm-up calls), and the whole run's frames/s.
#[derive(Clone, Copy)]
struct PipelineRun {
    fps: f64,
    overhead: f64,
    whole_fps: f64,
    /// Process CPU time a frame in steady state (every thread: decoding, inference, drawing, encoding).
    cpu_ms: Option<f64>,
}

/// The full pipeline on the same video (decode → infer → null sink, or with `encode` → overlay → H.264
/// MP4 + JSON Lines) against `model_fps`, the model alone at the pipeline's floor.
fn run_pipeline(
    args: &Args,
    engine: &Path,
    batch: usize,
    frames: usize,
    model_fps: f64,
    encode: bool,
) -> anyhow::Result<PipelineRun> {
    let mut cfg = base_config(engine, args);
    cfg.sources = vec![SourceConfig {
        uri: args.video.display().to_string(),
        name: Some("bench".into()),
        max_frames: Some(frames as u64),
        ..SourceConfig::new("")
    }];
    cfg.inference.max_batch = Some(batch);
    let out_dir = std::env::temp_dir().join(format!("maskstream-bench-{}", std::process::id()));
    if encode {
        std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
        cfg.output.video = Some(out_dir.join("bench.mp4").display().to_string());
        cfg.output.jsonl = Some(out_dir.join("bench.jsonl").display().to_string());
    }
    let summary = pipeline::run(&cfg, RunContext::default());
    if encode {
        let _ = std::fs::remove_dir_all(&out_dir);
    }
    let summary = summary?;
    let whole_fps = summary.fps();
    // Per frame in steady state, as the model-only figure: both leave out the warm-up calls (the
    // pipeline's start-up and the closing of its outputs are one-off costs, shown by the whole run).
    let steady = summary
        .steady
        .context("the pipeline ran too few frames for a steady-state figure")?;
    let fps = steady.fps();
    let overhead = model_fps / fps - 1.0;
    let cpu_ms = steady
        .cpu
        .map(|c| c.as_secs_f64() * 1e3 / steady.frames.max(1) as f64);
    let what = if encode {
        "decode → infer → overlay → H.264 MP4 + JSON Lines"
    } else {
        "decode → infer → null sink: nothing shows pixels, so no drawing"
    };
    println!(
        "full pipeline ({what}): {} frames, steady state {fps:.2} frames/s ({} frames after the warm-up, {:.1} ms CPU a frame), overhead vs model-only at its floor {:+.1}%; whole run {whole_fps:.2} frames/s ({:+.1}%)",
        summary.frames,
        steady.frames,
        cpu_ms.unwrap_or(f64::NAN),
        overhead * 100.0,
        (model_fps / whole_fps - 1.0) * 100.0
    );
    Ok(PipelineRun {
        fps,
        overhead,
        whole_fps,
        cpu_ms,
    })
}

#[derive(clap::Args)]
pub struct RoiArgs {
    /// Folder with feature_0..3.npy ([1,C,H,W], P2..P5), boxes.npy ([R,4]) and expected.npy (torchvision).
    pub dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
}

/// Times our multi-level ROIAlign on inputs written by engines/tools/compare.py; prints JSON.
pub fn run_roi_align(args: RoiArgs) -> anyhow::Result<()> {
    use maskstream::engine::FeatureLayout;
    use maskstream::model::roi_align::{self, FeatureMap, Roi, RoiAlignParams};
    use ndarray::ArrayD;

    let read = |name: &str| -> anyhow::Result<ArrayD<f32>> {
        let p = args.dir.join(name);
        ndarray_npy::read_npy(&p).with_context(|| format!("{}", p.display()))
    };
    let feats: Vec<ArrayD<f32>> = (0..4)
        .map(|i| read(&format!("feature_{i}.npy")))
        .collect::<anyhow::Result<_>>()?;
    let boxes = read("boxes.npy")?;
    let expected = read("expected.npy")?;
    let image_h = feats[0].shape()[2] * 4;
    let maps: Vec<FeatureMap<'_>> = feats
        .iter()
        .map(|f| {
            let s = f.shape();
            Ok(FeatureMap {
                data: f.as_slice().context("feature not contiguous")?.into(),
                layout: FeatureLayout::Nchw,
                batch: s[0],
                channels: s[1],
                height: s[2],
                width: s[3],
                spatial_scale: roi_align::infer_scale(s[2], image_h),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let b = boxes.as_slice().context("boxes not contiguous")?;
    let rois: Vec<Roi> = b
        .chunks_exact(4)
        .map(|c| {
            let bbox = [c[0], c[1], c[2], c[3]];
            Roi {
                batch: 0,
                level: roi_align::map_level(&bbox, 2, 5, 224.0, 4.0),
                bbox,
            }
        })
        .collect();
    let params = RoiAlignParams {
        output_size: 7,
        layout: FeatureLayout::Nchw,
        sampling_ratio: 2,
        aligned: false,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let mut out = vec![0.0f32; expected.len()];
    pool.install(|| roi_align::roi_align(&maps, &rois, &params, &mut out))?;
    let t0 = Instant::now();
    for _ in 0..args.repeats {
        pool.install(|| roi_align::roi_align(&maps, &rois, &params, &mut out))?;
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / args.repeats.max(1) as f64;
    let diff = expected
        .as_slice()
        .context("expected not contiguous")?
        .iter()
        .zip(&out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{}",
        serde_json::json!({ "ms": ms, "max_abs_diff": diff, "rois": rois.len() })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median([3.0, -1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
