//! Directed counting lines: a track crosses line `from → to` when its anchor moves from one side to the
//! other *through the segment*. Within `hysteresis` pixels of the line a point is on no side, so jitter
//! on the line never flips the side back and forth; each track counts at most once per direction.

use geo::{line_intersection::line_intersection, Coord, Line as Segment};

use super::config::LineConfig;
use super::events::Direction;

#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub segment: Segment<f64>,
    classes: Option<Vec<String>>,
    hysteresis: f64,
}

/// One track's relation to one line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LineState {
    /// Last point seen clearly on one side, and that side (true: right-hand side).
    last: Option<((f64, f64), bool)>,
    counted: [bool; 2],
}

impl Line {
    pub fn new(cfg: &LineConfig, hysteresis: f32) -> Self {
        let c = |[x, y]: [f64; 2]| Coord { x, y };
        Line {
            name: cfg.name.clone(),
            segment: Segment::new(c(cfg.from), c(cfg.to)),
            classes: cfg.classes.clone(),
            hysteresis: hysteresis as f64,
        }
    }

    pub fn applies_to(&self, label: &str) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|c| c.iter().any(|c| c == label))
    }

    /// Signed distance from the (infinite) line; positive on the right-hand side of `from → to` with y
    /// pointing down, as the picture is displayed.
    pub fn signed_distance(&self, (x, y): (f64, f64)) -> f64 {
        let (a, b) = (self.segment.start, self.segment.end);
        let (dx, dy) = (b.x - a.x, b.y - a.y);
        (dx * (y - a.y) - dy * (x - a.x)) / dx.hypot(dy)
    }

    /// Advances one track by a frame in which it was seen at `point`; a new crossing (its direction) is
    /// returned once per track and direction.
    pub fn step(&self, s: &mut LineState, point: (f64, f64)) -> Option<Direction> {
        let d = self.signed_distance(point);
        if d.abs() <= self.hysteresis {
            return None;
        }
        let right = d > 0.0;
        let previous = s.last.replace((point, right));
        let (from, was_right) = previous?;
        if was_right == right {
            return None;
        }
        // the path from the last clear point to this one must pass through the segment itself
        let path = Segment::new(Coord::from(from), Coord::from(point));
        line_intersection(path, self.segment)?;
        let dir = if was_right {
            Direction::RightToLeft
        } else {
            Direction::LeftToRight
        };
        let k = dir as usize;
        if s.counted[k] {
            return None;
        }
        s.counted[k] = true;
        Some(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A horizontal line from (0, 50) to (100, 50): pointing right, so "below" (y > 50) is its
    /// right-hand side.
    fn gate() -> Line {
        Line::new(
            &LineConfig {
                name: "gate".into(),
                from: [0.0, 50.0],
                to: [100.0, 50.0],
                source: None,
                classes: None,
            },
            4.0,
        )
    }

    #[test]
    fn sides_follow_the_picture() {
        let l = gate();
        assert!(l.signed_distance((50.0, 60.0)) > 0.0);
        assert!(l.signed_distance((50.0, 40.0)) < 0.0);
    }

    #[test]
    fn counts_each_direction_once_through_the_segment_only() {
        let l = gate();
        let mut s = LineState::default();
        let ys = [
            30.0, 45.0, 51.0, 47.0, 53.0, 60.0, 70.0, 40.0, 30.0, 70.0, 20.0,
        ];
        let got: Vec<Option<Direction>> = ys.iter().map(|&y| l.step(&mut s, (50.0, y))).collect();
        // jitter within ±4 px does nothing; 30 → 60 crosses left→right (top is the left-hand side);
        // 70 → 40 crosses back; later crossings of the same track do not count again
        assert_eq!(got[5], Some(Direction::LeftToRight));
        assert_eq!(got[7], Some(Direction::RightToLeft));
        assert_eq!(got.iter().flatten().count(), 2, "{got:?}");
        // beside the segment: no crossing
        let mut s = LineState::default();
        assert_eq!(l.step(&mut s, (150.0, 30.0)), None);
        assert_eq!(l.step(&mut s, (150.0, 70.0)), None);
    }
}
