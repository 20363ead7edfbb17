//! Polygon zones: an object is in a zone when its anchor point lies inside the polygon for `inertia`
//! consecutive frames (and out after as many frames outside), so a box flickering on the border does
//! not enter and leave every frame — Frigate's inertia. Point-in-polygon comes from `geo`.

use geo::{Contains, Coord, LineString, Point, Polygon};

use super::config::ZoneConfig;

#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub polygon: Polygon<f64>,
    classes: Option<Vec<String>>,
    inertia: u32,
    loiter_ns: Option<u64>,
}

/// One track's relation to one zone.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ZoneState {
    pub inside: bool,
    /// Consecutive frames disagreeing with `inside`.
    streak: u32,
    /// pts of the first frame of the stay (the first frame of the streak that entered).
    streak_start: u64,
    entered_at: u64,
    loitered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ZoneChange {
    Enter,
    Leave,
    /// Inside for the zone's loiter time (once per stay); seconds inside.
    Loiter(f64),
}

impl Zone {
    pub fn new(cfg: &ZoneConfig) -> Self {
        let ring: Vec<Coord<f64>> = cfg.polygon.iter().map(|&[x, y]| Coord { x, y }).collect();
        Zone {
            name: cfg.name.clone(),
            polygon: Polygon::new(LineString::new(ring), Vec::new()),
            classes: cfg.classes.clone(),
            inertia: cfg.inertia.max(1),
            loiter_ns: cfg.loiter_s.map(|s| (s * 1e9) as u64),
        }
    }

    pub fn applies_to(&self, label: &str) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|c| c.iter().any(|c| c == label))
    }

    pub fn contains(&self, (x, y): (f64, f64)) -> bool {
        self.polygon.contains(&Point::new(x, y))
    }

    /// Advances one track's state by one frame in which it was seen at `point`.
    pub fn step(&self, s: &mut ZoneState, point: (f64, f64), pts_ns: u64) -> Option<ZoneChange> {
        let now_inside = self.contains(point);
        if now_inside == s.inside {
            s.streak = 0;
            if s.inside && !s.loitered {
                if let Some(limit) = self.loiter_ns {
                    let dwell = pts_ns.saturating_sub(s.entered_at);
                    if dwell >= limit {
                        s.loitered = true;
                        return Some(ZoneChange::Loiter(dwell as f64 / 1e9));
                    }
                }
            }
            return None;
        }
        if s.streak == 0 {
            s.streak_start = pts_ns;
        }
        s.streak += 1;
        if s.streak < self.inertia {
            return None;
        }
        s.inside = now_inside;
        s.streak = 0;
        if now_inside {
            s.entered_at = s.streak_start;
            s.loitered = false;
            Some(ZoneChange::Enter)
        } else {
            Some(ZoneChange::Leave)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(inertia: u32, loiter_s: Option<f64>) -> Zone {
        Zone::new(&ZoneConfig {
            name: "dock".into(),
            polygon: vec![[10.0, 10.0], [50.0, 10.0], [50.0, 50.0], [10.0, 50.0]],
            source: None,
            classes: Some(vec!["circle".into()]),
            inertia,
            loiter_s,
        })
    }

    #[test]
    fn inertia_filters_border_flicker() {
        let z = square(3, None);
        let mut s = ZoneState::default();
        let (inp, out) = ((30.0, 30.0), (5.0, 30.0));
        let mut changes = Vec::new();
        // in, out, in, in, in (entered on the third consecutive), out, out, out (left)
        for (f, p) in [inp, out, inp, inp, inp, out, out, out]
            .into_iter()
            .enumerate()
        {
            if let Some(c) = z.step(&mut s, p, f as u64) {
                changes.push((f, c));
            }
        }
        assert_eq!(
            changes,
            vec![(4, ZoneChange::Enter), (7, ZoneChange::Leave)]
        );
        assert!(z.applies_to("circle") && !z.applies_to("triangle"));
    }

    #[test]
    fn loiter_fires_once_per_stay() {
        let z = square(1, Some(1.0));
        let mut s = ZoneState::default();
        let mut loiters = 0;
        for f in 0..100u64 {
            let p = if f == 50 { (0.0, 0.0) } else { (20.0, 20.0) };
            if let Some(ZoneChange::Loiter(d)) = z.step(&mut s, p, f * 100_000_000) {
                assert!(d >= 1.0);
                loiters += 1;
            }
        }
        // stays of 5 s and 4.9 s: one loiter each
        assert_eq!(loiters, 2);
    }
}
