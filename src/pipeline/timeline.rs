//! One timeline per source. A camera that drops and comes back starts its timestamps afresh (often at
//! 0); downstream (the MP4, the JSON Lines, the tracker) must see one clock that only moves forward.
//! Each new session is placed after the previous one by the wall time that passed between them, so
//! a recording's duration matches the wall-clock span of its frames.

use std::time::{Duration, Instant, SystemTime};

/// The stamps of one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stamp {
    pub pts_ns: Option<u64>,
    pub ts: SystemTime,
}

#[derive(Debug)]
pub struct Timeline {
    live: bool,
    /// Added to the current session's pts.
    offset: i128,
    new_session: bool,
    last_pts: Option<u64>,
    last_duration: u64,
    last_at: Option<Instant>,
    /// Files: wall clock and pts of the first frame; later frames are placed from their pts.
    origin: Option<(SystemTime, u64)>,
    size: Option<(usize, usize)>,
}

/// The smallest step between two frames' pts (muxers refuse equal timestamps).
const MIN_STEP_NS: u64 = 1_000;

impl Timeline {
    pub fn new(live: bool) -> Self {
        Timeline {
            live,
            offset: 0,
            new_session: true,
            last_pts: None,
            last_duration: 0,
            last_at: None,
            origin: None,
            size: None,
        }
    }

    /// The next frame starts a new session (a reconnect).
    pub fn new_session(&mut self) {
        self.new_session = true;
    }

    /// The frame size of the first session: later sessions are scaled to it.
    pub fn size(&self) -> Option<(usize, usize)> {
        self.size
    }

    /// Stamps a frame: its pts on the source's one timeline and its wall-clock time of capture
    /// (`sender`: the sender's clock when the stream carries one).
    pub fn map(
        &mut self,
        pts: Option<u64>,
        duration: Option<u64>,
        sender: Option<SystemTime>,
        size: (usize, usize),
        now: Instant,
    ) -> Stamp {
        self.size.get_or_insert(size);
        let pts = pts.map(|p| self.place(p, now));
        if let Some(d) = duration {
            self.last_duration = d;
        }
        let ts = sender.unwrap_or_else(|| self.wall_clock(pts));
        Stamp { pts_ns: pts, ts }
    }

    fn place(&mut self, pts: u64, now: Instant) -> u64 {
        if std::mem::take(&mut self.new_session) {
            if let (Some(last), Some(at)) = (self.last_pts, self.last_at) {
                // the gap the viewer lived through, at least one frame
                let gap = now.saturating_duration_since(at).as_nanos() as u64;
                let target = last.saturating_add(gap.max(self.last_duration).max(MIN_STEP_NS));
                self.offset = target as i128 - pts as i128;
            }
        }
        let mut out = (pts as i128 + self.offset).clamp(0, u64::MAX as i128) as u64;
        if let Some(last) = self.last_pts {
            if out <= last {
                out = last + MIN_STEP_NS;
            }
        }
        self.last_pts = Some(out);
        self.last_at = Some(now);
        out
    }

    fn wall_clock(&mut self, pts: Option<u64>) -> SystemTime {
        let now = SystemTime::now();
        if self.live {
            return now;
        }
        // a file has no capture time: its frames are placed from the run's start by their position
        match pts {
            Some(p) => {
                let (t0, p0) = *self.origin.get_or_insert((now, p));
                t0 + Duration::from_nanos(p.saturating_sub(p0))
            }
            None => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::events::rfc3339_ms;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_reconnect_continues_the_timeline_by_the_wall_time_that_passed() {
        let mut t = Timeline::new(true);
        let t0 = Instant::now();
        let mut last = 0;
        for i in 0..10u64 {
            let s = t.map(Some(i * 33 * MS), Some(33 * MS), None, (64, 48), t0);
            last = s.pts_ns.unwrap();
        }
        // the camera comes back 2 s later and counts from 0 again
        t.new_session();
        let later = t0 + Duration::from_secs(2);
        let s = t.map(Some(0), Some(33 * MS), None, (64, 48), later);
        let first = s.pts_ns.unwrap();
        assert!(first >= last + 2000 * MS, "{first} after {last}");
        let s2 = t.map(Some(33 * MS), Some(33 * MS), None, (64, 48), later);
        assert_eq!(s2.pts_ns.unwrap() - first, 33 * MS);
        assert_eq!(t.size(), Some((64, 48)));
    }

    #[test]
    fn pts_never_go_back_or_repeat() {
        let mut t = Timeline::new(true);
        let now = Instant::now();
        let a = t
            .map(Some(100 * MS), None, None, (1, 1), now)
            .pts_ns
            .unwrap();
        let b = t
            .map(Some(100 * MS), None, None, (1, 1), now)
            .pts_ns
            .unwrap();
        let c = t
            .map(Some(50 * MS), None, None, (1, 1), now)
            .pts_ns
            .unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn files_place_frames_from_their_position_and_senders_clock_wins() {
        let mut t = Timeline::new(false);
        let now = Instant::now();
        let a = t.map(Some(0), None, None, (1, 1), now).ts;
        let b = t.map(Some(500 * MS), None, None, (1, 1), now).ts;
        assert_eq!(b.duration_since(a).unwrap(), Duration::from_millis(500));
        let ntp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(t.map(Some(600 * MS), None, Some(ntp), (1, 1), now).ts, ntp);
        assert_eq!(rfc3339_ms(ntp), "2023-11-14T22:13:20.000Z");
    }
}
