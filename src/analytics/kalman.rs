//! Constant-velocity Kalman filter on the box as (centre x, centre y, aspect w/h, height), with the
//! noise model of SORT/ByteTrack (position noise 1/20 of the height, velocity noise 1/160).
//!
//! With F = [I I; 0 I], H = [I 0] and diagonal noise, the 8-state filter of ByteTrack never couples one
//! coordinate with another: its covariance stays four independent 2×2 blocks (value, velocity). So the
//! filter is four 2-state filters here — the same numbers, no matrix crate, no allocation.

use crate::model::boxes::BoxF;

const STD_POSITION: f32 = 1.0 / 20.0;
const STD_VELOCITY: f32 = 1.0 / 160.0;
/// Aspect noise is absolute (ByteTrack's 1e-2 position, 1e-5 velocity, 1e-1 measurement).
const ASPECT_STD: (f32, f32, f32) = (1e-2, 1e-5, 1e-1);

/// One coordinate: value, velocity and their 2×2 covariance [[pp, pv], [pv, vv]].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    x: f32,
    v: f32,
    pp: f32,
    pv: f32,
    vv: f32,
}

impl Axis {
    fn new(x: f32, std_x: f32, std_v: f32) -> Self {
        Axis {
            x,
            v: 0.0,
            pp: std_x * std_x,
            pv: 0.0,
            vv: std_v * std_v,
        }
    }

    fn predict(&mut self, q_x: f32, q_v: f32) {
        self.x += self.v;
        // F P Fᵀ + Q with F = [[1, 1], [0, 1]]
        self.pp += 2.0 * self.pv + self.vv + q_x * q_x;
        self.pv += self.vv;
        self.vv += q_v * q_v;
    }

    fn update(&mut self, z: f32, r: f32) {
        let s = self.pp + r * r;
        let (k_x, k_v) = (self.pp / s, self.pv / s);
        let y = z - self.x;
        self.x += k_x * y;
        self.v += k_v * y;
        // (I − K H) P
        let (pp, pv) = (self.pp, self.pv);
        self.pp = (1.0 - k_x) * pp;
        self.pv = (1.0 - k_x) * pv;
        self.vv -= k_v * pv;
    }
}

/// The filter state of one track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KalmanBox {
    /// cx, cy, aspect, height.
    axes: [Axis; 4],
}

fn to_xyah(b: &BoxF) -> [f32; 4] {
    let w = (b[2] - b[0]).max(1e-3);
    let h = (b[3] - b[1]).max(1e-3);
    [b[0] + w / 2.0, b[1] + h / 2.0, w / h, h]
}

impl KalmanBox {
    pub fn new(b: &BoxF) -> Self {
        let m = to_xyah(b);
        let h = m[3];
        let (p, v) = (2.0 * STD_POSITION * h, 10.0 * STD_VELOCITY * h);
        KalmanBox {
            axes: [
                Axis::new(m[0], p, v),
                Axis::new(m[1], p, v),
                Axis::new(m[2], ASPECT_STD.0, ASPECT_STD.1),
                Axis::new(m[3], p, v),
            ],
        }
    }

    /// One frame ahead. A lost track stops growing or shrinking (ByteTrack zeroes its height velocity).
    pub fn predict(&mut self, lost: bool) {
        if lost {
            self.axes[3].v = 0.0;
        }
        let h = self.axes[3].x.max(1.0);
        let (p, v) = (STD_POSITION * h, STD_VELOCITY * h);
        for (i, a) in self.axes.iter_mut().enumerate() {
            if i == 2 {
                a.predict(ASPECT_STD.0, ASPECT_STD.1);
            } else {
                a.predict(p, v);
            }
        }
    }

    /// Takes in a measured box; `noise_scale` multiplies the measurement noise's standard deviation
    /// (1: ByteTrack's; more for a box that shows only part of the object).
    pub fn update(&mut self, b: &BoxF, noise_scale: f32) {
        let z = to_xyah(b);
        let r = noise_scale * STD_POSITION * self.axes[3].x.max(1.0);
        for (i, (a, z)) in self.axes.iter_mut().zip(z).enumerate() {
            a.update(z, if i == 2 { ASPECT_STD.2 } else { r });
        }
    }

    /// The current estimate as [x1, y1, x2, y2].
    pub fn bbox(&self) -> BoxF {
        let [cx, cy, a, h] = self.axes.map(|a| a.x);
        let h = h.max(0.0);
        let w = (a * h).max(0.0);
        [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
    }

    /// Standard deviation of the estimated centre (pixels, the larger of x and y): grows while a
    /// track is lost, by how little its motion is known.
    pub fn centre_std(&self) -> f32 {
        self.axes[0].pp.max(self.axes[1].pp).max(0.0).sqrt()
    }

    /// Estimated motion of the centre per frame (pixels).
    pub fn velocity(&self) -> (f32, f32) {
        (self.axes[0].v, self.axes[1].v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box that shrinks from one side (an object being covered) pulls the centre back; weighed as
    /// the partial view it is, it leaves the learned motion nearly as it was.
    #[test]
    fn a_partial_view_weighed_less_keeps_the_motion() {
        let velocity_after_cover = |weigh: bool| {
            let mut k = KalmanBox::new(&[0.0, 0.0, 20.0, 20.0]);
            for t in 1..30 {
                k.predict(false);
                let x = 3.0 * t as f32;
                k.update(&[x, 0.0, x + 20.0, 20.0], 1.0);
            }
            for (t, w) in (30..34).zip([15.0, 10.0, 6.0, 3.0]) {
                k.predict(false);
                let x = 3.0 * t as f32;
                k.update(&[x, 0.0, x + w, 20.0], if weigh { 20.0 / w } else { 1.0 });
            }
            k.velocity().0
        };
        let (plain, weighed) = (velocity_after_cover(false), velocity_after_cover(true));
        assert!(plain < 2.4, "plain {plain}");
        assert!(weighed > 2.5, "weighed {weighed}");
    }

    #[test]
    fn learns_a_constant_velocity_and_predicts_it() {
        let mut k = KalmanBox::new(&[0.0, 0.0, 20.0, 40.0]);
        for t in 1..30 {
            k.predict(false);
            let x = 3.0 * t as f32;
            k.update(&[x, 0.0, x + 20.0, 40.0], 1.0);
        }
        let (vx, vy) = k.velocity();
        assert!((vx - 3.0).abs() < 0.05 && vy.abs() < 0.05, "{vx} {vy}");
        k.predict(false);
        let b = k.bbox();
        assert!(
            (b[0] - 90.0).abs() < 0.5 && (b[2] - 110.0).abs() < 0.5,
            "{b:?}"
        );
        assert!((b[3] - b[1] - 40.0).abs() < 0.1);
    }

    #[test]
    fn matches_the_dense_filter_on_one_axis() {
        // first step of the 8-state filter written out by hand for the x centre, h = 40:
        // P0 = diag((2·h/20)², (10·h/160)²) = diag(16, 6.25); predict adds Q = diag(2², 0.25²)
        let mut k = KalmanBox::new(&[0.0, 0.0, 20.0, 40.0]);
        k.predict(false);
        let a = k.axes[0];
        assert!((a.pp - (16.0 + 6.25 + 4.0)).abs() < 1e-4);
        assert!((a.pv - 6.25).abs() < 1e-4);
        assert!((a.vv - (6.25 + 0.0625)).abs() < 1e-4);
        // update with z = x + 10, R = (h/20)² = 4: K = [26.25/30.25, 6.25/30.25]
        k.update(&[10.0, 0.0, 30.0, 40.0], 1.0);
        let a = k.axes[0];
        assert!(
            (a.x - (10.0 + 10.0 * 26.25 / 30.25)).abs() < 1e-3,
            "{}",
            a.x
        );
        assert!((a.v - 10.0 * 6.25 / 30.25).abs() < 1e-3, "{}", a.v);
    }

    #[test]
    fn centre_uncertainty_grows_while_lost() {
        let mut k = KalmanBox::new(&[0.0, 0.0, 20.0, 20.0]);
        for _ in 0..10 {
            k.predict(false);
            k.update(&[0.0, 0.0, 20.0, 20.0], 1.0);
        }
        let mut last = k.centre_std();
        for _ in 0..20 {
            k.predict(true);
            assert!(k.centre_std() > last);
            last = k.centre_std();
        }
        // position noise 1/20 and velocity noise 1/160 of the height: after 20 unseen frames the
        // centre is known to about half the object's height (11.5 px of 20)
        assert!((8.0..16.0).contains(&last), "{last}");
    }

    #[test]
    fn lost_tracks_keep_their_size() {
        let mut k = KalmanBox::new(&[0.0, 0.0, 10.0, 10.0]);
        for t in 1..10 {
            k.predict(false);
            let s = 10.0 + t as f32;
            k.update(&[0.0, 0.0, s, s], 1.0);
        }
        let h = k.bbox()[3] - k.bbox()[1];
        for _ in 0..10 {
            k.predict(true);
        }
        assert!((k.bbox()[3] - k.bbox()[1] - h).abs() < 1e-3);
    }
}
