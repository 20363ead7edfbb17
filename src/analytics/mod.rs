//! Analytics: a stage between the model and the sinks, one [`Analytics`] per source.
//!
//! detections → merge cross-class duplicates ([`merge`]) → tracker ([`tracker`], Kalman [`kalman`])
//! → zones ([`zones`]) and lines ([`lines`]) → events ([`events`]) and the frame's `"analytics"` object.
//! [`mot`] scores a tracker against ground truth (CLEAR-MOT and ID measures).

pub mod bench;
pub mod config;
pub mod draw;
pub mod events;
pub mod kalman;
pub mod lines;
pub mod merge;
pub mod mot;
pub mod tracker;
pub mod zones;

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::model::boxes::BoxF;
use crate::model::Detection;
pub use config::{AnalyticsConfig, Anchor, LineConfig, Settings, TrackerConfig, ZoneConfig};
pub use events::{Direction, Event, EventType};
use lines::{Line, LineState};
use tracker::{Track, TrackState, Tracker};
use zones::{Zone, ZoneChange, ZoneState};

/// What one frame produced.
#[derive(Debug, Default)]
pub struct FrameAnalytics {
    /// The instances to output (score at or above the output threshold, duplicates merged, on a
    /// confirmed track unless `output_tentative`), each with its track's stable label in `class_id`.
    pub instances: Vec<Detection>,
    /// The track id of each instance.
    pub track_ids: Vec<u64>,
    /// The frame record's `"analytics"` object.
    pub summary: Value,
    pub events: Vec<Event>,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AnalyticsStats {
    /// Tracks confirmed.
    pub tracks: u64,
    pub events: BTreeMap<EventType, u64>,
    /// Per line (in configuration order): name and crossings [left_to_right, right_to_left].
    pub lines: Vec<(String, [u64; 2])>,
    /// Cross-class duplicates merged away.
    pub merged: u64,
}

impl std::fmt::Display for AnalyticsStats {
    /// `12 tracks; events: track_start 12, track_end 12, line_cross 3; line gate: left_to_right 2,
    /// right_to_left 1; 4 duplicates merged`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tracks; events:", self.tracks)?;
        let mut any = false;
        for t in EventType::ALL {
            if let Some(n) = self.events.get(&t) {
                write!(f, "{} {} {n}", if any { "," } else { "" }, t.as_str())?;
                any = true;
            }
        }
        if !any {
            write!(f, " none")?;
        }
        for (name, c) in &self.lines {
            write!(
                f,
                "; line {name}: {} {}, {} {}",
                Direction::LeftToRight.as_str(),
                c[0],
                Direction::RightToLeft.as_str(),
                c[1]
            )?;
        }
        write!(f, "; {} duplicates merged", self.merged)
    }
}

#[derive(Debug, Default)]
struct TrackAnalytics {
    zones: Vec<ZoneState>,
    lines: Vec<LineState>,
    /// Zones entered, in order of first entry.
    entered: Vec<usize>,
}

/// Tracking, zones, lines and events of one source.
pub struct Analytics {
    source: String,
    run_id: String,
    classes: Vec<String>,
    settings: Settings,
    tracker: Tracker,
    zones: Vec<Zone>,
    lines: Vec<Line>,
    per_track: HashMap<u64, TrackAnalytics>,
    line_counts: Vec<[u64; 2]>,
    zone_counts: Vec<BTreeMap<String, u64>>,
    seq: u64,
    stats: AnalyticsStats,
    /// Where the last frame stood (for events at the end of the stream).
    last: (u64, u64),
}

impl Analytics {
    /// `settings` as filtered for this source ([`Settings::for_source`]); `run_id` makes event ids
    /// unique across runs; `classes` are the engine's class names by id.
    pub fn new(source: &str, run_id: &str, classes: &[String], settings: Settings) -> Self {
        let zones = settings.zones.iter().map(Zone::new).collect::<Vec<_>>();
        let h = settings.analytics.line_hysteresis_px;
        let lines = settings
            .lines
            .iter()
            .map(|l| Line::new(l, h))
            .collect::<Vec<_>>();
        Analytics {
            source: source.to_string(),
            run_id: run_id.to_string(),
            classes: classes.to_vec(),
            tracker: Tracker::new(settings.tracker.clone()),
            line_counts: vec![[0; 2]; lines.len()],
            zone_counts: vec![BTreeMap::new(); zones.len()],
            zones,
            lines,
            settings,
            per_track: HashMap::new(),
            seq: 0,
            stats: AnalyticsStats::default(),
            last: (0, 0),
        }
    }

    /// The lowest score the tracker wants to see given the output threshold (the model's detections
    /// below it can be dropped before [`Analytics::process`]).
    pub fn input_threshold(&self, output_threshold: f32) -> f32 {
        let t = &self.settings.tracker;
        t.low_threshold.min(t.high_threshold).min(output_threshold)
    }

    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Crossings per line so far: [left_to_right, right_to_left].
    pub fn line_counts(&self) -> &[[u64; 2]] {
        &self.line_counts
    }

    /// Objects in each zone in the last frame, all labels together.
    pub fn zone_totals(&self) -> Vec<u64> {
        self.zone_counts.iter().map(|m| m.values().sum()).collect()
    }

    pub fn stats(&self) -> AnalyticsStats {
        let mut s = self.stats.clone();
        s.lines = self
            .lines
            .iter()
            .zip(&self.line_counts)
            .map(|(l, c)| (l.name.clone(), *c))
            .collect();
        s
    }

    /// Tracks alive now (bounded by the objects in view plus those lost for under `max_lost`).
    pub fn live_tracks(&self) -> usize {
        self.tracker.tracks().len()
    }

    fn label(&self, class_id: usize) -> String {
        self.classes.get(class_id).cloned().unwrap_or_default()
    }

    fn anchor(&self, b: &BoxF) -> (f64, f64) {
        let cx = (b[0] + b[2]) as f64 / 2.0;
        match self.settings.analytics.anchor {
            Anchor::BottomCenter => (cx, b[3] as f64),
            Anchor::Center => (cx, (b[1] + b[3]) as f64 / 2.0),
        }
    }

    fn event(&mut self, kind: EventType, t: &Track, frame: u64, pts_ns: u64, ts: &str) -> Event {
        self.seq += 1;
        *self.stats.events.entry(kind).or_default() += 1;
        Event {
            id: format!("{}/{}/{}", self.run_id, self.source, self.seq),
            kind,
            source: self.source.clone(),
            frame,
            pts_ns,
            ts: ts.to_string(),
            track_id: t.id,
            label: self.label(t.class_id()),
            score: t.score,
            bbox: t.bbox,
            zone: None,
            line: None,
            direction: None,
            duration_s: None,
            best_score: None,
            zones: None,
            dwell_s: None,
        }
    }

    /// One frame: `detections` as the model gave them (any order, any score), `output_threshold` the
    /// user's score threshold, `ts` the frame's wall clock (RFC 3339).
    pub fn process(
        &mut self,
        mut detections: Vec<Detection>,
        output_threshold: f32,
        frame: u64,
        pts_ns: u64,
        ts: &str,
    ) -> FrameAnalytics {
        let _span = tracing::debug_span!("analytics", source = %self.source, frame).entered();
        self.last = (frame, pts_ns);
        let floor = self.input_threshold(output_threshold);
        detections.retain(|d| d.score >= floor);
        let t = &self.settings.tracker;
        self.stats.merged +=
            merge::merge_duplicates(&mut detections, t.merge_iou, t.merge_containment) as u64;
        let step = self
            .tracker
            .update(&detections, output_threshold, frame, pts_ns);
        let mut events = Vec::new();
        self.start_tracks(&step.confirmed, frame, pts_ns, ts, &mut events);
        self.follow_seen(frame, pts_ns, ts, &mut events);
        for t in &step.ended {
            self.end(t, frame, pts_ns, ts, &mut events);
        }
        let (instances, track_ids) =
            self.tracked_instances(detections, &step.assigned, output_threshold);
        FrameAnalytics {
            instances,
            track_ids,
            summary: self.summary(),
            events,
        }
    }

    /// Analytics state and a `track_start` event for each track confirmed in this frame.
    fn start_tracks(
        &mut self,
        confirmed: &[u64],
        frame: u64,
        pts_ns: u64,
        ts: &str,
        events: &mut Vec<Event>,
    ) {
        for id in confirmed {
            self.stats.tracks += 1;
            self.per_track.insert(
                *id,
                TrackAnalytics {
                    zones: vec![ZoneState::default(); self.zones.len()],
                    lines: vec![LineState::default(); self.lines.len()],
                    entered: Vec::new(),
                },
            );
            if let Some(t) = self.tracker.track(*id).cloned() {
                let e = self.event(EventType::TrackStart, &t, frame, pts_ns, ts);
                events.push(e);
            }
        }
    }

    /// Zones and lines follow confirmed tracks seen in this frame.
    fn follow_seen(&mut self, frame: u64, pts_ns: u64, ts: &str, events: &mut Vec<Event>) {
        for c in &mut self.zone_counts {
            c.clear();
        }
        // zones and lines follow confirmed tracks seen in this frame (a lost track keeps its state:
        // an occluded object has not left)
        let seen: Vec<Track> = self
            .tracker
            .tracks()
            .iter()
            .filter(|t| t.state == TrackState::Confirmed && t.last_frame == frame)
            .cloned()
            .collect();
        for t in &seen {
            self.follow(t, frame, pts_ns, ts, events);
        }
    }

    /// The detections written out: at the output threshold, tracked, confirmed (or tentative
    /// when `output_tentative`), with the track's voted class; and their track ids.
    fn tracked_instances(
        &self,
        detections: Vec<Detection>,
        assigned: &[Option<u64>],
        output_threshold: f32,
    ) -> (Vec<Detection>, Vec<u64>) {
        let mut instances = Vec::new();
        let mut track_ids = Vec::new();
        for (d, id) in detections.into_iter().zip(assigned) {
            if d.score < output_threshold {
                continue;
            }
            // the tracker starts a track for every detection at the output threshold
            let Some(id) = *id else { continue };
            let Some(t) = self.tracker.track(id) else {
                continue;
            };
            if t.state != TrackState::Confirmed && !self.settings.tracker.output_tentative {
                continue;
            }
            let mut d = d;
            d.class_id = t.class_id();
            instances.push(d);
            track_ids.push(id);
        }
        (instances, track_ids)
    }

    /// Zones and lines for one confirmed track seen at this frame.
    fn follow(&mut self, t: &Track, frame: u64, pts_ns: u64, ts: &str, events: &mut Vec<Event>) {
        let label = self.label(t.class_id());
        let point = self.anchor(&t.bbox);
        let Some(mut state) = self.per_track.remove(&t.id) else {
            return;
        };
        for z in 0..self.zones.len() {
            if !self.zones[z].applies_to(&label) {
                continue;
            }
            let change = self.zones[z].step(&mut state.zones[z], point, pts_ns);
            if state.zones[z].inside {
                *self.zone_counts[z].entry(label.clone()).or_default() += 1;
            }
            let (kind, dwell) = match change {
                Some(ZoneChange::Enter) => {
                    if !state.entered.contains(&z) {
                        state.entered.push(z);
                    }
                    (EventType::ZoneEnter, None)
                }
                Some(ZoneChange::Leave) => (EventType::ZoneLeave, None),
                Some(ZoneChange::Loiter(s)) => (EventType::Loiter, Some(s)),
                None => continue,
            };
            let mut e = self.event(kind, t, frame, pts_ns, ts);
            e.zone = Some(self.zones[z].name.clone());
            e.dwell_s = dwell;
            events.push(e);
        }
        for l in 0..self.lines.len() {
            if !self.lines[l].applies_to(&label) {
                continue;
            }
            if let Some(dir) = self.lines[l].step(&mut state.lines[l], point) {
                self.line_counts[l][dir as usize] += 1;
                let mut e = self.event(EventType::LineCross, t, frame, pts_ns, ts);
                e.line = Some(self.lines[l].name.clone());
                e.direction = Some(dir);
                events.push(e);
            }
        }
        self.per_track.insert(t.id, state);
    }

    /// A confirmed track is gone: it leaves its zones, then ends. Its state is freed.
    fn end(&mut self, t: &Track, frame: u64, pts_ns: u64, ts: &str, events: &mut Vec<Event>) {
        let state = self.per_track.remove(&t.id).unwrap_or_default();
        for (z, s) in state.zones.iter().enumerate() {
            if s.inside {
                let mut e = self.event(EventType::ZoneLeave, t, frame, pts_ns, ts);
                e.zone = Some(self.zones[z].name.clone());
                events.push(e);
            }
        }
        let mut e = self.event(EventType::TrackEnd, t, frame, pts_ns, ts);
        e.duration_s = Some(t.last_pts_ns.saturating_sub(t.first_pts_ns) as f64 / 1e9);
        e.best_score = Some(t.best_score);
        e.zones = Some(
            state
                .entered
                .iter()
                .map(|&z| self.zones[z].name.clone())
                .collect(),
        );
        events.push(e);
    }

    /// End of stream: every confirmed track ends.
    pub fn finish(&mut self, ts: &str) -> Vec<Event> {
        let (frame, pts_ns) = self.last;
        let mut events = Vec::new();
        for t in self.tracker.finish() {
            self.end(&t, frame, pts_ns, ts, &mut events);
        }
        self.per_track.clear();
        events
    }

    /// `{"zones": {zone: {label: objects inside}}, "lines": {line: {"left_to_right": n,
    /// "right_to_left": m}}}`
    fn summary(&self) -> Value {
        let mut zones = Map::new();
        for (z, counts) in self.zones.iter().zip(&self.zone_counts) {
            zones.insert(z.name.clone(), json!(counts));
        }
        let mut lines = Map::new();
        for (l, c) in self.lines.iter().zip(&self.line_counts) {
            lines.insert(
                l.name.clone(),
                json!({
                    Direction::LeftToRight.as_str(): c[0],
                    Direction::RightToLeft.as_str(): c[1],
                }),
            );
        }
        json!({"zones": zones, "lines": lines})
    }
}

#[cfg(test)]
mod tests {
    use super::merge::tests::det;
    use super::*;

    fn settings() -> Settings {
        Settings {
            tracker: TrackerConfig {
                min_hits: 2,
                max_lost_frames: 2,
                ..Default::default()
            },
            analytics: AnalyticsConfig::default(),
            zones: vec![ZoneConfig {
                name: "right".into(),
                polygon: vec![[60.0, 0.0], [100.0, 0.0], [100.0, 100.0], [60.0, 100.0]],
                source: None,
                classes: None,
                inertia: 2,
                loiter_s: None,
            }],
            lines: vec![LineConfig {
                name: "gate".into(),
                from: [50.0, 100.0],
                to: [50.0, 0.0],
                source: None,
                classes: Some(vec!["circle".into()]),
            }],
        }
    }

    fn classes() -> Vec<String> {
        ["__background__", "circle", "rectangle"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_walk_through_a_zone_and_over_a_line() {
        let mut a = Analytics::new("cam", "run", &classes(), settings());
        let mut events = Vec::new();
        let mut last = None;
        for f in 0..40u64 {
            // a circle walks right at 2 px/frame; a duplicate "rectangle" on the same pixels
            let x = 10 + 2 * f as usize;
            let dets = if x < 90 {
                vec![det(1, 0.9, x, 20, 10, 10), det(2, 0.8, x, 20, 10, 10)]
            } else {
                vec![]
            };
            let out = a.process(dets, 0.5, f, f * 100_000_000, "t");
            if x < 90 {
                assert_eq!(out.instances.len(), 1, "duplicate merged");
                assert_eq!(out.track_ids, vec![1]);
                assert_eq!(out.instances[0].class_id, 1);
            }
            events.extend(out.events);
            last = Some(out.summary);
        }
        events.extend(a.finish("t"));
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "track_start",
                "line_cross",
                "zone_enter",
                "zone_leave",
                "track_end"
            ]
        );
        // the line points up (50,100) → (50,0): its left-hand side is the left of the picture
        assert_eq!(events[1].direction, Some(Direction::LeftToRight));
        assert_eq!(events[1].line.as_deref(), Some("gate"));
        let end = &events[4];
        assert_eq!(end.zones.as_deref(), Some(&["right".to_string()][..]));
        assert!((end.duration_s.unwrap() - 3.9).abs() < 1e-9, "{end:?}");
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), events.len(), "event ids are unique");
        assert_eq!(last.unwrap()["lines"]["gate"]["left_to_right"], 1);
        let s = a.stats();
        assert_eq!((s.tracks, s.merged), (1, 40));
        assert_eq!(s.lines, vec![("gate".to_string(), [1, 0])]);
        assert_eq!(a.live_tracks(), 0);
        assert_eq!(
            s.to_string(),
            "1 tracks; events: track_start 1, track_end 1, zone_enter 1, zone_leave 1, line_cross 1; \
             line gate: left_to_right 1, right_to_left 0; 40 duplicates merged"
        );
    }

    #[test]
    fn zone_counts_per_label_in_the_frame_record() {
        let mut a = Analytics::new("cam", "run", &classes(), settings());
        let mut out = None;
        for f in 0..5u64 {
            let dets = vec![det(1, 0.9, 70, 20, 10, 10), det(2, 0.9, 80, 60, 10, 10)];
            out = Some(a.process(dets, 0.5, f, f, "t"));
        }
        let s = out.unwrap().summary;
        assert_eq!(s["zones"]["right"]["circle"], 1);
        assert_eq!(s["zones"]["right"]["rectangle"], 1);
        assert_eq!(a.zone_totals(), vec![2]);
    }

    #[test]
    fn memory_stays_bounded_over_many_short_tracks() {
        let mut a = Analytics::new("cam", "run", &classes(), settings());
        for f in 0..3000u64 {
            // a new object every 10 frames, each visible for 6
            let k = f / 10;
            let dets = if f % 10 < 6 {
                vec![det(1, 0.9, (k % 7) as usize * 10, 40, 10, 10)]
            } else {
                vec![]
            };
            a.process(dets, 0.5, f, f, "t");
            assert!(a.live_tracks() <= 2 && a.per_track.len() <= 2);
        }
        assert_eq!(a.stats().tracks, 300);
    }
}
