//! `GET /metrics`: the pipeline's process-wide metrics plus, read at scrape time, the per-stream
//! counters that live in the sources' `SourceStats` (so nothing is counted twice).

use std::sync::atomic::Ordering;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts};

use super::hub::Hub;
use crate::pipeline::metrics::{INFERRED_QUEUE, METRICS};

/// Something else with a queue worth watching (the MQTT publisher): its depth and its drops.
pub trait QueueGauge: Send + Sync {
    fn queued(&self) -> u64;
    fn dropped(&self) -> u64;
}

impl QueueGauge for crate::pipeline::mqtt::MqttPublisher {
    fn queued(&self) -> u64 {
        crate::pipeline::mqtt::MqttPublisher::queued(self) as u64
    }
    fn dropped(&self) -> u64 {
        crate::pipeline::mqtt::MqttPublisher::dropped(self)
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

/// The per-stream families, made fresh for each scrape.
fn stream_families(
    hub: &Hub,
    mqtt: Option<&dyn QueueGauge>,
) -> prometheus::Result<Vec<MetricFamily>> {
    let decoded = counter(
        "maskstream_decoded_frames_total",
        "Frames decoded from the source",
        &["source"],
    )?;
    let dropped = counter(
        "maskstream_dropped_frames_total",
        "Frames of a live source dropped because inference was behind",
        &["source"],
    )?;
    let reconnects = counter(
        "maskstream_reconnects_total",
        "Times the source reconnected after a failure",
        &["source"],
    )?;
    let depth = gauge(
        "maskstream_queue_depth",
        "Frames waiting between stages",
        &["queue"],
    )?;
    let tracks = gauge(
        "maskstream_tracks_active",
        "Tracked objects in the source's latest frame",
        &["source"],
    )?;
    let up = gauge(
        "maskstream_source_up",
        "1 while the source is starting or running, else 0",
        &["source"],
    )?;
    let fps = prometheus::GaugeVec::new(
        Opts::new(
            "maskstream_source_fps",
            "Frames per second through the pipeline, smoothed over ~1 s",
        ),
        &["source"],
    )?;
    for s in hub.streams() {
        let n = [s.name.as_str()];
        decoded.with_label_values(&n).inc_by(s.decoded);
        dropped.with_label_values(&n).inc_by(s.dropped);
        reconnects.with_label_values(&n).inc_by(s.reconnects);
        tracks.with_label_values(&n).set(s.tracks as i64);
        fps.with_label_values(&n).set(s.fps);
        let running = matches!(
            s.state,
            super::hub::StreamState::Starting | super::hub::StreamState::Running
        );
        up.with_label_values(&n).set(i64::from(running));
        let q = format!("source/{}", s.name);
        depth.with_label_values(&[q.as_str()]).set(s.queued as i64);
    }
    depth
        .with_label_values(&["inferred"])
        .set(INFERRED_QUEUE.load(Ordering::Relaxed) as i64);
    let mut out = Vec::new();
    use prometheus::core::Collector;
    out.extend(decoded.collect());
    out.extend(dropped.collect());
    out.extend(reconnects.collect());
    out.extend(depth.collect());
    out.extend(tracks.collect());
    out.extend(up.collect());
    out.extend(fps.collect());
    let queued = prometheus::IntGauge::new(
        "maskstream_mqtt_queued_messages",
        "MQTT messages waiting for the broker",
    )?;
    let mqtt_dropped = prometheus::IntCounter::new(
        "maskstream_mqtt_dropped_messages_total",
        "MQTT messages dropped (oldest first) because the queue was full",
    )?;
    if let Some(m) = mqtt {
        queued.set(m.queued() as i64);
        mqtt_dropped.inc_by(m.dropped());
        out.extend(queued.collect());
        out.extend(mqtt_dropped.collect());
    }
    Ok(out)
}

/// The whole exposition, Prometheus text format 0.0.4.
pub fn render(hub: &Hub, mqtt: Option<&dyn QueueGauge>) -> Result<String, String> {
    let mut families = METRICS
        .as_ref()
        .map(|m| m.registry.gather())
        .unwrap_or_default();
    families.extend(stream_families(hub, mqtt).map_err(|e| e.to_string())?);
    // a family with no series yet (no stream) is not valid text format
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::observe::Observer;
    use crate::pipeline::source::SourceStats;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn per_stream_counters_come_from_the_source_stats() {
        let hub = Hub::new(Duration::from_secs(1));
        let stats = Arc::new(SourceStats::default());
        stats.dropped.store(7, Ordering::Relaxed);
        stats.queued.store(2, Ordering::Relaxed);
        hub.source_added("door", "rtsp://cam/door", &stats);
        let text = render(&hub, None).unwrap();
        for want in [
            "maskstream_dropped_frames_total{source=\"door\"} 7",
            "maskstream_queue_depth{queue=\"source/door\"} 2",
            "maskstream_source_up{source=\"door\"} 1",
            "# TYPE maskstream_reconnects_total counter",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE maskstream_queue_depth").count(),
            1,
            "one family per name"
        );
    }
}
