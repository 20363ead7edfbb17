//! The analytics stage of the pipeline, per source: tracker, zones and lines on the model's detections,
//! then the events file. Lives on the composite thread, between inference and the sinks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::config::{expand, PipelineConfig};
use super::observe::{Observer, Observers};
use super::source::Frame;
use super::stats::StageStats;
use crate::analytics::events::rfc3339_ms;
use crate::analytics::{Analytics, AnalyticsStats, Event};
use crate::error::Result;
use crate::model::Detection;
use crate::output::FrameRecord;

/// One JSON line per event, each handed to the OS as it is written (a consumer tailing the file sees
/// events as they happen; a crash loses none already reported).
type EventsSink = super::sink::JsonlSink;

/// What the analytics stage hands the sinks for one frame.
pub struct Tracked {
    pub instances: Vec<Detection>,
    pub track_ids: Vec<u64>,
    pub summary: Value,
}

pub struct SourceTracking {
    pub analytics: Analytics,
    events: Option<EventsSink>,
    name: String,
    /// Live consumers of the events (MQTT, HTTP API), after the file.
    observers: Observers,
}

impl SourceTracking {
    /// None when tracking is off.
    pub fn open(
        cfg: &PipelineConfig,
        name: &str,
        run_id: &str,
        classes: &[String],
        observers: Observers,
    ) -> Result<Option<Self>> {
        if !cfg.tracker.enabled {
            return Ok(None);
        }
        let events = match &cfg.output.events {
            Some(t) => Some(EventsSink::create(&PathBuf::from(expand(t, name)))?),
            None => None,
        };
        Ok(Some(SourceTracking {
            analytics: Analytics::new(
                name,
                run_id,
                classes,
                cfg.analytics_settings().for_source(name),
            ),
            events,
            name: name.to_string(),
            observers,
        }))
    }

    /// Tracks one frame and writes its events; also returns the time it took.
    pub fn frame(
        &mut self,
        detections: Vec<Detection>,
        threshold: f32,
        frame: u64,
        pts_ns: u64,
        ts: &str,
    ) -> Result<(Tracked, Duration)> {
        let t = Instant::now();
        let out = self
            .analytics
            .process(detections, threshold, frame, pts_ns, ts);
        let took = t.elapsed();
        self.write(&out.events)?;
        Ok((
            Tracked {
                instances: out.instances,
                track_ids: out.track_ids,
                summary: out.summary,
            },
            took,
        ))
    }

    fn write(&mut self, events: &[Event]) -> Result<()> {
        if let Some(sink) = &mut self.events {
            for e in events {
                sink.write(e)?;
            }
        }
        for e in events {
            super::metrics::event(&self.name, e.kind.as_str());
            self.observers.event(&self.name, e);
        }
        Ok(())
    }

    /// End of the source: the remaining tracks end; returns the source's counters.
    pub fn finish(mut self) -> Result<AnalyticsStats> {
        let events = self.analytics.finish(&rfc3339_ms(SystemTime::now()));
        self.write(&events)?;
        Ok(self.analytics.stats())
    }
}

/// One frame's instances to write and draw, their record and their track ids: through the source's
/// tracking when it is on (its time recorded as the `track` stage), else the detections at the score
/// threshold.
pub fn frame_output(
    tracking: Option<&mut SourceTracking>,
    name: &str,
    frame: &Frame,
    detections: Vec<Detection>,
    threshold: f32,
    classes: &[String],
    stages: &mut StageStats,
) -> Result<(Vec<Detection>, FrameRecord, Vec<u64>)> {
    // capture time, shared by the frame record and its events
    let ts = rfc3339_ms(frame.ts);
    let Some(tr) = tracking else {
        let kept: Vec<Detection> = detections
            .into_iter()
            .filter(|d| d.score >= threshold)
            .collect();
        let record = FrameRecord::new(name, frame.width, frame.height, &kept, classes)
            .with_frame(frame.index, frame.pts_ns)
            .with_ts(ts);
        return Ok((kept, record, Vec::new()));
    };
    let pts = frame.pts_ns.unwrap_or(0);
    let (tracked, took) = tr.frame(detections, threshold, frame.index, pts, &ts)?;
    stages.record("track", took);
    let record = FrameRecord::new(name, frame.width, frame.height, &tracked.instances, classes)
        .with_frame(frame.index, frame.pts_ns)
        .with_ts(ts)
        .with_tracking(&tracked.track_ids, tracked.summary);
    Ok((tracked.instances, record, tracked.track_ids))
}

impl SourceTracking {
    /// `finish`, its counters into `stats` or its error into `errors` (by source index).
    pub fn finish_into(
        self,
        source: usize,
        stats: &mut HashMap<usize, AnalyticsStats>,
        errors: &mut HashMap<usize, String>,
    ) {
        match self.finish() {
            Ok(s) => {
                stats.insert(source, s);
            }
            Err(e) => {
                errors.entry(source).or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Event ids stay unique across runs: they start with the run's start time (UTC, ms).
pub fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::merge::tests::det;

    const FILE: &str = r#"
[[source]]
uri = "a.mp4"
name = "cam"
[[source]]
uri = "b.mp4"
name = "other"
[tracker]
min_hits = 1
[analytics]
anchor = "center"
[[zone]]
name = "left"
polygon = [[0, 0], [50, 0], [50, 100], [0, 100]]
inertia = 1
[[zone]]
name = "elsewhere"
polygon = [[0, 0], [50, 0], [50, 100]]
source = "other"
[[line]]
name = "gate"
from = [60, 100]
to = [60, 0]
[output]
events = "EVENTS"
"#;

    #[test]
    fn pipeline_files_carry_zones_lines_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("sub/{name}.events.jsonl");
        let text = FILE.replace("EVENTS", &events.display().to_string());
        let cfg = PipelineConfig::parse(&text).unwrap();
        assert_eq!((cfg.zones.len(), cfg.lines.len()), (2, 1));
        let classes: Vec<String> = ["bg", "circle"].map(String::from).to_vec();
        let mut t = SourceTracking::open(&cfg, "cam", "run", &classes, Observers::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            t.analytics.zones().len(),
            1,
            "the other source's zone is left out"
        );
        for f in 0..30u64 {
            let x = 10 + 3 * f as usize;
            let (tracked, _) = t
                .frame(
                    vec![det(1, 0.9, x, 40, 10, 10)],
                    0.5,
                    f,
                    f,
                    "2026-01-01T00:00:00.000Z",
                )
                .unwrap();
            assert_eq!(tracked.track_ids, vec![1]);
        }
        let stats = t.finish().unwrap();
        assert_eq!(stats.lines, vec![("gate".to_string(), [1, 0])]);
        let written = std::fs::read_to_string(dir.path().join("sub/cam.events.jsonl")).unwrap();
        let kinds: Vec<String> = written
            .lines()
            .map(|l| {
                serde_json::from_str::<Event>(l)
                    .unwrap()
                    .kind
                    .as_str()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "track_start",
                "zone_enter",
                "zone_leave",
                "line_cross",
                "track_end"
            ]
        );
    }

    /// FILE with its events per source in the working folder (never written: only parsed).
    fn file() -> String {
        FILE.replace("EVENTS", "{name}.events.jsonl")
    }

    #[test]
    fn bad_analytics_settings_name_their_key() {
        let e = PipelineConfig::parse(&file().replace("inertia = 1", "inertia = 1\nloiter = 3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loiter"), "{e}");
        let e = PipelineConfig::parse(&file().replace("min_hits = 1", "min_hits = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tracker.min_hits"), "{e}");
        let e = PipelineConfig::parse(&file().replace("to = [60, 0]", "to = [60, 100]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line[0]") && e.contains("same point"), "{e}");
        let off =
            PipelineConfig::parse(&file().replace("min_hits = 1", "enabled = false")).unwrap();
        assert!(
            SourceTracking::open(&off, "cam", "r", &[], Observers::default())
                .unwrap()
                .is_none()
        );
    }
}
