//! Analytics settings of a pipeline file: `[tracker]`, `[analytics]`, `[[zone]]`, `[[line]]`.
//! Every key has a default; unknown keys are errors, and `validate` names the key of a bad value.

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// `[x, y]`: exactly two numbers (a third, e.g. `[50, 50, 3]`, is an error, not ignored).
fn point<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<[f64; 2], D::Error> {
    let v = Vec::<f64>::deserialize(d)?;
    <[f64; 2]>::try_from(v.as_slice()).map_err(|_| {
        serde::de::Error::custom(format!("a point is [x, y], not {} numbers", v.len()))
    })
}

fn points<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<[f64; 2]>, D::Error> {
    #[derive(Deserialize)]
    struct P(#[serde(deserialize_with = "point")] [f64; 2]);
    Ok(Vec::<P>::deserialize(d)?.into_iter().map(|p| p.0).collect())
}

/// The ByteTrack-class tracker (one per source).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Off: instances carry no `track_id`, frame records no `"analytics"`, no events.
    pub enabled: bool,
    /// Detections at or above this score take part in the first association stage (capped by the
    /// output threshold, so everything written is tracked).
    pub high_threshold: f32,
    /// Detections between this and `high_threshold` only keep existing tracks alive (second stage);
    /// below it the tracker never sees them.
    pub low_threshold: f32,
    /// An unmatched detection at or above this score starts a track (capped by the output threshold).
    pub new_track_threshold: f32,
    /// Least similarity (IoU) for a match in the first stage.
    pub match_iou: f32,
    /// Least similarity for a match of a low-score detection (second stage); stricter, as in ByteTrack.
    pub low_match_iou: f32,
    /// Blend mask IoU (the track's last mask moved by the predicted motion) into the box IoU: helps
    /// where boxes overlap but shapes do not (occlusion, thin or rotated objects).
    pub mask_iou: bool,
    /// A detection of another class than a track's label (its score-weighted vote) counts this share of
    /// its similarity to the track: where objects of different classes cross, each keeps its own id,
    /// while an object whose class flickers still continues its track. 1 is class-blind.
    pub other_class_weight: f32,
    /// Recovery of lost tracks: a lost track that no detection continues by plain similarity is looked
    /// for again among the high-score detections left, of its own class, with both boxes widened by
    /// this many standard deviations of its predicted centre (3: the usual gate; they grow the longer it is unseen; the
    /// buffered IoU of C-BIoU, Yang et al. 2023). Brings an object back under its old id after an
    /// occlusion that bent its motion estimate. 0 turns it off.
    pub recovery_buffer: f32,
    /// Matched frames before a track is confirmed (and `track_start` is sent). Tracks found in the
    /// stream's first frame are confirmed at once (as ByteTrack does).
    pub min_hits: u32,
    /// Also write (and draw) instances whose track is not confirmed yet. Off: a one-frame false
    /// detection never reaches the outputs, and an object's first `min_hits - 1` frames do not either.
    pub output_tentative: bool,
    /// Frames a track survives unmatched before it is removed (`track_end`).
    pub max_lost_frames: u32,
    /// The same in milliseconds of stream time; when set it wins over `max_lost_frames`.
    pub max_lost_ms: Option<u64>,
    /// Cross-class duplicates (same pixels reported under two classes) whose mask IoU reaches this are
    /// merged, keeping the best score; 1.0 turns merging off.
    pub merge_iou: f32,
    /// Any two detections (of any classes) where this share of the smaller mask lies inside the
    /// larger one are one object too (the model also reports a part, or an object with some
    /// background, as a second instance); 1.0 turns it off.
    pub merge_containment: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            enabled: true,
            high_threshold: 0.5,
            low_threshold: 0.1,
            new_track_threshold: 0.6,
            match_iou: 0.2,
            low_match_iou: 0.5,
            mask_iou: true,
            other_class_weight: 0.7,
            recovery_buffer: 3.0,
            min_hits: 3,
            output_tentative: false,
            max_lost_frames: 30,
            max_lost_ms: None,
            // visible masks of two real objects never overlap (the nearer one hides the other), so
            // half the pixels in common already means one object reported twice
            merge_iou: 0.5,
            merge_containment: 0.5,
        }
    }
}

/// Which point of a box stands for the object in zones and on lines.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// Where an object stands on the ground (DeepStream's and Frigate's choice).
    #[default]
    BottomCenter,
    Center,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    pub anchor: Anchor,
    /// A point closer than this (pixels) to a line is on neither side: jitter on the line never
    /// counts as a crossing.
    pub line_hysteresis_px: f32,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            anchor: Anchor::BottomCenter,
            line_hysteresis_px: 4.0,
        }
    }
}

/// `[[zone]]`: a polygon in the source's frame pixels.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    #[serde(deserialize_with = "points")]
    pub polygon: Vec<[f64; 2]>,
    /// The source it applies to (by name); all sources when absent.
    pub source: Option<String>,
    /// Labels counted; all when absent.
    pub classes: Option<Vec<String>>,
    /// Consecutive frames inside (outside) before an object counts as entered (left).
    #[serde(default = "default_inertia")]
    pub inertia: u32,
    /// Seconds inside after which a `loiter` event is sent (once per stay).
    pub loiter_s: Option<f64>,
}

fn default_inertia() -> u32 {
    3
}

/// `[[line]]`: a directed segment `from → to` in the source's frame pixels.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub name: String,
    #[serde(deserialize_with = "point")]
    pub from: [f64; 2],
    #[serde(deserialize_with = "point")]
    pub to: [f64; 2],
    pub source: Option<String>,
    pub classes: Option<Vec<String>>,
}

/// Everything the analytics of a run is configured with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub tracker: TrackerConfig,
    pub analytics: AnalyticsConfig,
    pub zones: Vec<ZoneConfig>,
    pub lines: Vec<LineConfig>,
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        self.validate_tracker()?;
        self.validate_analytics()?;
        self.validate_zones()?;
        self.validate_lines()?;
        self.validate_unique_names()
    }

    /// `[tracker]`: thresholds within 0..1 and consistent, counts and durations bounded.
    fn validate_tracker(&self) -> Result<()> {
        let t = &self.tracker;
        for (key, v) in [
            ("tracker.high_threshold", t.high_threshold),
            ("tracker.low_threshold", t.low_threshold),
            ("tracker.new_track_threshold", t.new_track_threshold),
            ("tracker.match_iou", t.match_iou),
            ("tracker.low_match_iou", t.low_match_iou),
            ("tracker.other_class_weight", t.other_class_weight),
            ("tracker.merge_iou", t.merge_iou),
            ("tracker.merge_containment", t.merge_containment),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} is outside 0..1"));
            }
        }
        if t.low_threshold > t.high_threshold {
            return bad(
                "tracker.low_threshold",
                format!(
                    "{} is above tracker.high_threshold {}",
                    t.low_threshold, t.high_threshold
                ),
            );
        }
        if t.match_iou == 0.0 || t.low_match_iou == 0.0 {
            return bad(
                "tracker.match_iou",
                "must be above 0 (0 would match disjoint objects)".into(),
            );
        }
        if !(0.0..=10.0).contains(&t.recovery_buffer) {
            return bad(
                "tracker.recovery_buffer",
                format!("{} is outside 0..10", t.recovery_buffer),
            );
        }
        if !(1..=1000).contains(&t.min_hits) {
            return bad(
                "tracker.min_hits",
                format!("{} is outside 1..1000", t.min_hits),
            );
        }
        if t.max_lost_frames > 100_000 {
            return bad(
                "tracker.max_lost_frames",
                format!("{} is over 100000", t.max_lost_frames),
            );
        }
        if t.max_lost_ms.is_some_and(|ms| ms > 3_600_000) {
            return bad("tracker.max_lost_ms", "is over 3600000 (1 hour)".into());
        }
        Ok(())
    }

    /// `[analytics]`.
    fn validate_analytics(&self) -> Result<()> {
        let h = self.analytics.line_hysteresis_px;
        if !(0.0..=1000.0).contains(&h) {
            return bad(
                "analytics.line_hysteresis_px",
                format!("{h} is outside 0..1000"),
            );
        }
        Ok(())
    }

    /// Each `[[zone]]`: a name, a finite polygon of 3 points or more, bounded inertia and loiter.
    fn validate_zones(&self) -> Result<()> {
        for (i, z) in self.zones.iter().enumerate() {
            let key = format!("zone[{i}] ({:?})", z.name);
            if z.name.trim().is_empty() {
                return bad(&format!("zone[{i}].name"), "is empty".into());
            }
            if z.polygon.len() < 3 {
                return bad(
                    &format!("{key}.polygon"),
                    format!("needs at least 3 points, has {}", z.polygon.len()),
                );
            }
            if z.polygon.iter().flatten().any(|v| !v.is_finite()) {
                return bad(
                    &format!("{key}.polygon"),
                    "has a non-finite coordinate".into(),
                );
            }
            if let Some((a, b)) = self_crossing(&z.polygon) {
                return bad(
                    &format!("{key}.polygon"),
                    format!(
                        "crosses itself (edges {a} and {b}): give its corners in order around it"
                    ),
                );
            }
            if polygon_area(&z.polygon) == 0.0 {
                return bad(
                    &format!("{key}.polygon"),
                    "encloses no area (its points are on one line)".into(),
                );
            }
            if z.inertia > 10_000 {
                return bad(
                    &format!("{key}.inertia"),
                    format!("{} is over 10000", z.inertia),
                );
            }
            if z.loiter_s.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
                return bad(
                    &format!("{key}.loiter_s"),
                    "must be a positive number".into(),
                );
            }
        }
        Ok(())
    }

    /// Each `[[line]]`: a name and two distinct finite points.
    fn validate_lines(&self) -> Result<()> {
        for (i, l) in self.lines.iter().enumerate() {
            let key = format!("line[{i}] ({:?})", l.name);
            if l.name.trim().is_empty() {
                return bad(&format!("line[{i}].name"), "is empty".into());
            }
            if l.from.iter().chain(&l.to).any(|v| !v.is_finite()) {
                return bad(&key, "has a non-finite coordinate".into());
            }
            if l.from == l.to {
                return bad(&key, "from and to are the same point".into());
            }
        }
        Ok(())
    }

    /// Every class a zone or line counts is one of the engine's (`classes`, by id).
    pub fn check_classes(&self, classes: &[String]) -> Result<()> {
        let zones = self.zones.iter().map(|z| ("zone", &z.name, &z.classes));
        let lines = self.lines.iter().map(|l| ("line", &l.name, &l.classes));
        for (what, name, wanted) in zones.chain(lines) {
            for c in wanted.iter().flatten() {
                if !classes.iter().any(|k| k == c) {
                    let known: Vec<&str> = classes
                        .iter()
                        .map(String::as_str)
                        .filter(|k| !k.starts_with("__") && *k != "N/A")
                        .collect();
                    return bad(
                        &format!("{what} {name:?}.classes"),
                        format!("{c:?} is not a class of the engine ({})", known.join(", ")),
                    );
                }
            }
        }
        Ok(())
    }

    /// Zones and lines share one namespace: no name twice.
    fn validate_unique_names(&self) -> Result<()> {
        let names: Vec<&str> = self
            .zones
            .iter()
            .map(|z| z.name.as_str())
            .chain(self.lines.iter().map(|l| l.name.as_str()))
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return bad(
                "zone/line name",
                format!(
                    "{:?} is used twice (zones and lines share one namespace)",
                    w[0]
                ),
            );
        }
        Ok(())
    }

    /// The zones and lines that apply to source `name`.
    pub fn for_source(&self, name: &str) -> Settings {
        let applies = |s: &Option<String>| s.as_deref().is_none_or(|s| s == name);
        Settings {
            tracker: self.tracker.clone(),
            analytics: self.analytics.clone(),
            zones: self
                .zones
                .iter()
                .filter(|z| applies(&z.source))
                .cloned()
                .collect(),
            lines: self
                .lines
                .iter()
                .filter(|l| applies(&l.source))
                .cloned()
                .collect(),
        }
    }
}

/// A `key: why` configuration error.
/// The shoelace area (absolute).
fn polygon_area(p: &[[f64; 2]]) -> f64 {
    let twice: f64 = (0..p.len())
        .map(|i| {
            let (a, b) = (p[i], p[(i + 1) % p.len()]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    (twice / 2.0).abs()
}

/// Two edges that are not neighbours and cross (or touch): their indices (edge i runs from point i
/// to point i + 1, the last one back to point 0).
fn self_crossing(p: &[[f64; 2]]) -> Option<(usize, usize)> {
    let n = p.len();
    let edge = |i: usize| (p[i], p[(i + 1) % n]);
    for i in 0..n {
        for j in i + 2..n {
            if i == 0 && j == n - 1 {
                continue; // they share point 0
            }
            if segments_meet(edge(i), edge(j)) {
                return Some((i, j));
            }
        }
    }
    None
}

fn segments_meet((a, b): ([f64; 2], [f64; 2]), (c, d): ([f64; 2], [f64; 2])) -> bool {
    let cross = |o: [f64; 2], p: [f64; 2], q: [f64; 2]| {
        (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])
    };
    let within = |o: [f64; 2], p: [f64; 2], q: [f64; 2]| {
        q[0] >= o[0].min(p[0])
            && q[0] <= o[0].max(p[0])
            && q[1] >= o[1].min(p[1])
            && q[1] <= o[1].max(p[1])
    };
    let (d1, d2) = (cross(c, d, a), cross(c, d, b));
    let (d3, d4) = (cross(a, b, c), cross(a, b, d));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && within(c, d, a))
        || (d2 == 0.0 && within(c, d, b))
        || (d3 == 0.0 && within(a, b, c))
        || (d4 == 0.0 && within(a, b, d))
}

fn bad(key: &str, why: String) -> Result<()> {
    Err(Error::Config(format!("{key}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, pts: usize) -> ZoneConfig {
        ZoneConfig {
            name: name.into(),
            polygon: (0..pts).map(|i| [i as f64, (i * i) as f64]).collect(),
            source: None,
            classes: None,
            inertia: 3,
            loiter_s: None,
        }
    }

    fn parse(text: &str) -> std::result::Result<ZoneConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn zones_must_be_simple_polygons_of_two_number_points() {
        let ok = "name = \"z\"\npolygon = [[0, 0], [100, 0], [100, 50], [0, 50]]";
        let z = parse(ok).unwrap();
        let mut s = Settings {
            zones: vec![z.clone()],
            ..Default::default()
        };
        s.validate().unwrap();
        for (polygon, needle) in [
            ("[[0, 0], [100, 0, 7], [100, 50]]", "not 3 numbers"),
            ("[[0, 0], [100], [100, 50]]", "not 1 numbers"),
        ] {
            let err = parse(&format!("name = \"z\"\npolygon = {polygon}")).unwrap_err();
            assert!(err.contains(needle), "{polygon}: {err}");
        }
        for (polygon, needle) in [
            (vec![[0.0, 0.0], [50.0, 50.0], [100.0, 100.0]], "no area"),
            (
                vec![[0.0, 0.0], [100.0, 100.0], [100.0, 0.0], [0.0, 100.0]],
                "crosses itself",
            ),
            (
                vec![
                    [0.0, 0.0],
                    [100.0, 0.0],
                    [0.0, 0.0],
                    [0.0, 100.0],
                    [50.0, 50.0],
                ],
                "crosses itself",
            ),
        ] {
            s.zones[0].polygon = polygon.clone();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{polygon:?}: {err}");
        }
        // concave is fine
        s.zones[0].polygon = vec![
            [0.0, 0.0],
            [100.0, 0.0],
            [50.0, 20.0],
            [100.0, 100.0],
            [0.0, 100.0],
        ];
        s.validate().unwrap();
        let line: std::result::Result<LineConfig, _> =
            toml::from_str("name = \"l\"\nfrom = [50, 50, 3]\nto = [0, 0]");
        assert!(line.unwrap_err().to_string().contains("not 3 numbers"));
    }

    #[test]
    fn zone_and_line_classes_are_the_engines() {
        let classes: Vec<String> = ["__background__", "circle", "rectangle"]
            .map(String::from)
            .to_vec();
        let mut z = zone("door", 3);
        z.classes = Some(vec!["circle".into()]);
        let mut s = Settings {
            zones: vec![z],
            ..Default::default()
        };
        s.check_classes(&classes).unwrap();
        s.zones[0].classes = Some(vec!["circel".into()]);
        let err = s.check_classes(&classes).unwrap_err().to_string();
        assert!(
            err.contains("zone \"door\".classes")
                && err.contains("\"circel\" is not a class of the engine (circle, rectangle)"),
            "{err}"
        );
    }

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        assert!(Settings::default().validate().is_ok());
        let mut s = Settings::default();
        s.tracker.low_threshold = 0.9;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("tracker.low_threshold"), "{e}");
        let mut s = Settings::default();
        s.tracker.min_hits = 0;
        assert!(s.validate().unwrap_err().to_string().contains("min_hits"));
        let mut s = Settings::default();
        s.zones.push(zone("dock", 2));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("zone[0]") && e.contains("3 points"), "{e}");
        let mut s = Settings::default();
        s.zones.push(zone("gate", 3));
        s.lines.push(LineConfig {
            name: "gate".into(),
            from: [0.0, 0.0],
            to: [1.0, 0.0],
            source: None,
            classes: None,
        });
        assert!(s.validate().unwrap_err().to_string().contains("used twice"));
        s.lines[0].name = "door".into();
        s.lines[0].to = [0.0, 0.0];
        assert!(s.validate().unwrap_err().to_string().contains("same point"));
    }

    #[test]
    fn unknown_keys_are_refused_and_sources_filter() {
        let e = toml::from_str::<TrackerConfig>("min_hit = 2").unwrap_err();
        assert!(e.to_string().contains("min_hit"), "{e}");
        let a: AnalyticsConfig = toml::from_str("anchor = \"center\"").unwrap();
        assert_eq!(a.anchor, Anchor::Center);
        assert!(toml::from_str::<AnalyticsConfig>("anchor = \"top\"").is_err());
        let mut s = Settings::default();
        let mut z = zone("a", 3);
        z.source = Some("cam1".into());
        s.zones.push(z);
        s.zones.push(zone("b", 3));
        assert_eq!(s.for_source("cam1").zones.len(), 2);
        assert_eq!(s.for_source("cam2").zones.len(), 1);
    }
}
