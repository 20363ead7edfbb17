//! Process-wide Prometheus metrics the pipeline stages record as they go (stage times, batch sizes,
//! frames, events). Per-source counters that already live in `SourceStats` are read at scrape time
//! by the HTTP API's collector instead of being counted twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Frames through the composite stage, per source.
    pub frames: IntCounterVec,
    pub events: IntCounterVec,
    pub stage_seconds: HistogramVec,
    pub batch_size: HistogramVec,
}

/// Stage times from 100 µs to ~26 s.
fn stage_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 19).unwrap_or_default()
}

fn build() -> prometheus::Result<Metrics> {
    let registry = Registry::new();
    let frames = IntCounterVec::new(
        Opts::new(
            "maskstream_frames_total",
            "Frames inferred and handed to the outputs",
        ),
        &["source"],
    )?;
    let events = IntCounterVec::new(
        Opts::new(
            "maskstream_events_total",
            "Analytics events (track, zone, line, loiter)",
        ),
        &["source", "type"],
    )?;
    let stage_seconds = HistogramVec::new(
        HistogramOpts::new(
            "maskstream_stage_seconds",
            "Time spent per frame in each pipeline stage",
        )
        .buckets(stage_buckets()),
        &["stage"],
    )?;
    let batch_size = HistogramVec::new(
        HistogramOpts::new("maskstream_batch_size", "Frames per model call")
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
        &[],
    )?;
    registry.register(Box::new(frames.clone()))?;
    registry.register(Box::new(events.clone()))?;
    registry.register(Box::new(stage_seconds.clone()))?;
    registry.register(Box::new(batch_size.clone()))?;
    #[cfg(target_os = "linux")]
    {
        // process_resident_memory_bytes, process_cpu_seconds_total, open fds, threads
        let p = prometheus::process_collector::ProcessCollector::for_self();
        registry.register(Box::new(p))?;
    }
    Ok(Metrics {
        registry,
        frames,
        events,
        stage_seconds,
        batch_size,
    })
}

/// The metrics, or None when they could not be made (names are constants: only a bug can do that,
/// and the pipeline goes on without them).
pub static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "Prometheus metrics unavailable");
        None
    }
});

/// Inferred frames waiting for the composite stage (read by the HTTP API with the source queues, so
/// that every `maskstream_queue_depth` sample comes from one place).
pub static INFERRED_QUEUE: AtomicU64 = AtomicU64::new(0);

pub fn inferred_queue(depth: usize) {
    INFERRED_QUEUE.store(depth as u64, Ordering::Relaxed);
}

pub fn stage(name: &str, d: Duration) {
    if let Some(m) = METRICS.as_ref() {
        m.stage_seconds
            .with_label_values(&[name])
            .observe(d.as_secs_f64());
    }
}

pub fn batch(frames: usize) {
    if let Some(m) = METRICS.as_ref() {
        m.batch_size
            .with_label_values(&[] as &[&str])
            .observe(frames as f64);
    }
}

pub fn frame(source: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.frames.with_label_values(&[source]).inc();
    }
}

pub fn event(source: &str, kind: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.events.with_label_values(&[source, kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn text_format_has_conventional_names() {
        stage("infer", Duration::from_millis(12));
        batch(2);
        frame("cam");
        event("cam", "track_start");
        let m = METRICS.as_ref().unwrap();
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for want in [
            "# TYPE maskstream_frames_total counter",
            "maskstream_frames_total{source=\"cam\"}",
            "maskstream_events_total{source=\"cam\",type=\"track_start\"}",
            "maskstream_stage_seconds_bucket{stage=\"infer\",le=\"0.0128\"} 1",
            "maskstream_batch_size_count",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
