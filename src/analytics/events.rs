//! Events: what happened to a tracked object, one JSON line each. Frigate-like lifecycle
//! (track_start … track_end) plus DeepStream-like analytics (zone_enter/leave, line_cross, loiter).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::boxes::BoxF;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    TrackStart,
    TrackEnd,
    ZoneEnter,
    ZoneLeave,
    LineCross,
    Loiter,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::TrackStart,
        EventType::TrackEnd,
        EventType::ZoneEnter,
        EventType::ZoneLeave,
        EventType::LineCross,
        EventType::Loiter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TrackStart => "track_start",
            EventType::TrackEnd => "track_end",
            EventType::ZoneEnter => "zone_enter",
            EventType::ZoneLeave => "zone_leave",
            EventType::LineCross => "line_cross",
            EventType::Loiter => "loiter",
        }
    }
}

/// Which side of a directed line `from → to` an object came from, as seen standing on `from` looking
/// at `to` in the picture as displayed (y down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Came from the left-hand side, went to the right-hand side.
    LeftToRight,
    RightToLeft,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::LeftToRight => "left_to_right",
            Direction::RightToLeft => "right_to_left",
        }
    }
}

/// One event. `id` is unique and stable: `<run>/<source>/<sequence>`, so a consumer that sees it twice
/// (a retried delivery) can drop the copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub source: String,
    pub frame: u64,
    pub pts_ns: u64,
    /// UTC wall clock, RFC 3339 with milliseconds.
    pub ts: String,
    pub track_id: u64,
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BoxF,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub direction: Option<Direction>,
    /// track_end: seconds from the first to the last frame the object was seen.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_s: Option<f64>,
    /// track_end: the best detection score over the track.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub best_score: Option<f32>,
    /// track_end: zones entered during the track, in order of first entry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub zones: Option<Vec<String>>,
    /// loiter: seconds inside the zone so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dwell_s: Option<f64>,
}

/// UTC wall clock as RFC 3339 with milliseconds (`2026-12-02T12:53:00.123Z`).
pub fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn serialises_the_documented_shape() {
        let e = Event {
            id: "r/cam/1".into(),
            kind: EventType::LineCross,
            source: "cam".into(),
            frame: 7,
            pts_ns: 233_333_333,
            ts: rfc3339_ms(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            track_id: 3,
            label: "circle".into(),
            score: 0.5,
            bbox: [1.0, 2.0, 3.0, 4.0],
            zone: None,
            line: Some("gate".into()),
            direction: Some(Direction::LeftToRight),
            duration_s: None,
            best_score: None,
            zones: None,
            dwell_s: None,
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "line_cross");
        assert_eq!(v["direction"], "left_to_right");
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["box"][3], 4.0);
        assert!(v.get("zone").is_none() && v.get("duration_s").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(EventType::ALL.map(|t| t.as_str()).len(), 6);
    }
}
