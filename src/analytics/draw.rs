//! Zones and lines on the overlay: zone outlines with the objects inside now, lines with an arrow
//! head at `to` and their cumulative counts per direction.

use super::Analytics;
use crate::overlay::{Canvas, Compositor};

const ZONE_COLOR: [u8; 3] = [255, 200, 0];
const LINE_COLOR: [u8; 3] = [0, 220, 255];

/// A straight segment `width` pixels thick (DDA: one square per step along the longer axis).
fn segment(canvas: &mut Canvas<'_>, a: (f64, f64), b: (f64, f64), width: usize, c: [u8; 3]) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0);
    // a segment far outside the frame costs nothing beyond the frame's own size
    let steps = steps.min(4.0 * (canvas.width + canvas.height) as f64) as usize;
    let half = (width / 2) as i64;
    let w = width.max(1) as i64;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = (a.0 + (b.0 - a.0) * t).round() as i64 - half;
        let y = (a.1 + (b.1 - a.1) * t).round() as i64 - half;
        canvas.fill_rect(x, y, x + w, y + w, c);
    }
}

/// Draws the source's zones and lines as `analytics` sees them after its last frame.
pub fn draw(canvas: &mut Canvas<'_>, compositor: &Compositor, analytics: &Analytics) {
    let width = compositor.style.line_width.max(1);
    for (zone, inside) in analytics.zones().iter().zip(analytics.zone_totals()) {
        let ring: Vec<(f64, f64)> = zone
            .polygon
            .exterior()
            .coords()
            .map(|c| (c.x, c.y))
            .collect();
        for w in ring.windows(2) {
            segment(canvas, w[0], w[1], width, ZONE_COLOR);
        }
        if let Some(&(x, y)) = ring.first() {
            let text = format!("{} {inside}", zone.name);
            compositor.label(canvas, &text, x as i64, y as i64, ZONE_COLOR);
        }
    }
    for (line, counts) in analytics.lines().iter().zip(analytics.line_counts()) {
        let (a, b) = (line.segment.start, line.segment.end);
        segment(canvas, (a.x, a.y), (b.x, b.y), width, LINE_COLOR);
        // arrow head at `to`, so the direction (and so left/right) reads off the picture
        let (dx, dy) = (b.x - a.x, b.y - a.y);
        let len = dx.hypot(dy).max(1e-9);
        let (ux, uy) = (dx / len, dy / len);
        let head = 12.0;
        for s in [-1.0, 1.0] {
            let tip = (
                b.x - head * ux + s * 0.5 * head * uy,
                b.y - head * uy - s * 0.5 * head * ux,
            );
            segment(canvas, (b.x, b.y), tip, width, LINE_COLOR);
        }
        let text = format!("{} L→R {} R→L {}", line.name, counts[0], counts[1]);
        let (mx, my) = ((a.x + b.x) / 2.0, (a.y + b.y) / 2.0);
        compositor.label(canvas, &text, mx as i64, my as i64, LINE_COLOR);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LineConfig, Settings, ZoneConfig};
    use super::*;
    use crate::overlay::OverlayStyle;

    #[test]
    fn draws_zone_and_line_pixels() {
        let settings = Settings {
            zones: vec![ZoneConfig {
                name: "z".into(),
                polygon: vec![[5.0, 30.0], [60.0, 30.0], [60.0, 60.0]],
                source: None,
                classes: None,
                inertia: 1,
                loiter_s: None,
            }],
            lines: vec![LineConfig {
                name: "l".into(),
                from: [10.0, 70.0],
                to: [90.0, 70.0],
                source: None,
                classes: None,
            }],
            ..Default::default()
        };
        let a = Analytics::new("s", "r", &[], settings);
        let (w, h) = (100usize, 80usize);
        let mut data = vec![0u8; w * h * 3];
        let comp = Compositor::new(OverlayStyle::default());
        draw(
            &mut Canvas {
                data: &mut data,
                width: w,
                height: h,
                stride: w * 3,
            },
            &comp,
            &a,
        );
        let px = |x: usize, y: usize| {
            [
                data[(y * w + x) * 3],
                data[(y * w + x) * 3 + 1],
                data[(y * w + x) * 3 + 2],
            ]
        };
        assert_eq!(px(60, 45), ZONE_COLOR);
        assert_eq!(px(20, 70), LINE_COLOR);
        assert_eq!(px(2, 2), [0, 0, 0]);
    }
}
