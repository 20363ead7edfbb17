//! A synthetic scene for `maskstream bench`'s `track` row: `objects` objects with 48×48 masks moving
//! across a 1280×720 frame (some crossing), each also reported once more under another class (the
//! duplicate the merge removes) and a low-score echo, with one zone and one line.

use std::time::Instant;

use super::{Analytics, LineConfig, Settings, ZoneConfig};
use crate::model::paste::InstanceMask;
use crate::model::Detection;

fn detection(class_id: usize, score: f32, x: f32, y: f32) -> Detection {
    let (w, h) = (48usize, 48usize);
    let (x0, y0) = (x.clamp(0.0, 1230.0) as usize, y.clamp(0.0, 670.0) as usize);
    let mut data = vec![0u8; w * h];
    // a disc: the masks are not boxes
    for (i, v) in data.iter_mut().enumerate() {
        let (dx, dy) = ((i % w) as i64 - 24, (i / w) as i64 - 24);
        *v = u8::from(dx * dx + dy * dy <= 24 * 24);
    }
    Detection {
        class_id,
        score,
        bbox: [x0 as f32, y0 as f32, (x0 + w) as f32, (y0 + h) as f32],
        mask: InstanceMask {
            frame_height: 720,
            frame_width: 1280,
            x0,
            y0,
            width: w,
            height: h,
            data,
        },
    }
}

/// Mean milliseconds per frame of merge + tracker + zones + lines + events over `frames` frames.
pub fn ms_per_frame(objects: usize, frames: usize) -> f64 {
    let settings = Settings {
        zones: vec![ZoneConfig {
            name: "zone".into(),
            polygon: vec![
                [100.0, 100.0],
                [700.0, 120.0],
                [640.0, 600.0],
                [80.0, 560.0],
            ],
            source: None,
            classes: None,
            inertia: 3,
            loiter_s: Some(2.0),
        }],
        lines: vec![LineConfig {
            name: "line".into(),
            from: [640.0, 700.0],
            to: [640.0, 20.0],
            source: None,
            classes: None,
        }],
        ..Default::default()
    };
    let classes: Vec<String> = ["bg", "a", "b"].map(String::from).to_vec();
    let mut a = Analytics::new("bench", "bench", &classes, settings);
    let mut total = std::time::Duration::ZERO;
    for f in 0..frames {
        let mut dets = Vec::with_capacity(objects * 3);
        for k in 0..objects {
            let lane = (k % 10) as f32 * 64.0 + 20.0;
            let dir = if k % 2 == 0 { 1.0 } else { -1.0 };
            let start = (k * 127 % 1200) as f32;
            let x = (start + dir * 3.0 * f as f32).rem_euclid(1230.0);
            let y = lane + (k / 10) as f32 * 20.0;
            dets.push(detection(1, 0.9, x, y));
            dets.push(detection(2, 0.6, x + 1.0, y));
            dets.push(detection(1, 0.2, x + 30.0, y + 30.0));
        }
        let t = Instant::now();
        let out = a.process(dets, 0.5, f as u64, f as u64 * 33_333_333, "t");
        total += t.elapsed();
        std::hint::black_box(out);
    }
    total.as_secs_f64() * 1e3 / frames.max(1) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn twenty_objects_cost_well_under_a_frame() {
        let ms = super::ms_per_frame(20, 100);
        println!("tracker + analytics at 20 objects: {ms:.3} ms/frame");
        // the target is 0.5 ms on a quiet machine (release); this bound only catches a blow-up on a
        // busy CI machine or in a debug build
        assert!(ms > 0.0 && ms < 20.0, "{ms} ms/frame");
    }
}
