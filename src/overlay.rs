//! The compositor on CPU frames: masks alpha-blended in per-class colours with an outline, boxes, and a
//! label + score tag drawn with a bundled font (DejaVu Sans Bold through ab_glyph).

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use serde::Deserialize;

use crate::model::paste::InstanceMask;
use crate::model::Detection;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-Bold.ttf");

/// Distinct colours, indexed by class id (cycled).
pub const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [170, 110, 40],
];

/// How detections are drawn; every field has a default (pipeline files may set any of them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayStyle {
    /// Mask opacity, 0..1.
    pub alpha: f32,
    pub outline: bool,
    pub boxes: bool,
    pub labels: bool,
    /// Colour per class id; classes past the end use the built-in palette.
    pub colors: Vec<[u8; 3]>,
    pub line_width: usize,
    pub font_size: f32,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        OverlayStyle {
            alpha: 0.5,
            outline: true,
            boxes: true,
            labels: true,
            colors: Vec::new(),
            line_width: 2,
            font_size: 14.0,
        }
    }
}

impl OverlayStyle {
    pub fn color(&self, class_id: usize) -> [u8; 3] {
        self.colors
            .get(class_id)
            .copied()
            .unwrap_or(PALETTE[class_id % PALETTE.len()])
    }
}

/// Draws detections onto packed RGB frames.
#[derive(Debug, Clone)]
pub struct Compositor {
    pub style: OverlayStyle,
    font: FontRef<'static>,
}

/// A mutable RGB8 image view.
pub struct Canvas<'a> {
    pub data: &'a mut [u8],
    pub width: usize,
    pub height: usize,
    pub stride: usize,
}

impl Canvas<'_> {
    #[inline]
    pub(crate) fn blend(&mut self, x: usize, y: usize, c: [u8; 3], a: f32) {
        let i = y * self.stride + x * 3;
        for (px, &ck) in self.data[i..i + 3].iter_mut().zip(&c) {
            let v = *px as f32 * (1.0 - a) + ck as f32 * a;
            *px = v.round().clamp(0.0, 255.0) as u8;
        }
    }

    pub(crate) fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        let (x0, y0) = (x0.max(0) as usize, y0.max(0) as usize);
        let x1 = x1.min(self.width as i64).max(0) as usize;
        let y1 = y1.min(self.height as i64).max(0) as usize;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * self.stride + x * 3;
                self.data[i..i + 3].copy_from_slice(&c);
            }
        }
    }
}

/// `round(v * (1 - alpha) + colour * alpha)` for every byte value `v` of each channel: the same float
/// expression as [`Canvas::blend`], so a mask's pixels come out identical at three lookups a pixel.
struct BlendTable([[u8; 256]; 3]);

impl BlendTable {
    fn new(c: [u8; 3], a: f32) -> Self {
        let mut t = [[0u8; 256]; 3];
        for (table, &ck) in t.iter_mut().zip(&c) {
            for (v, out) in table.iter_mut().enumerate() {
                let x = v as f32 * (1.0 - a) + ck as f32 * a;
                *out = x.round().clamp(0.0, 255.0) as u8;
            }
        }
        BlendTable(t)
    }
}

/// One instance mask: its pixels blended at `alpha`, its edge (a pixel with an unset 4-neighbour, or
/// on the mask's border) in the full colour when `outline`.
fn draw_mask(canvas: &mut Canvas<'_>, m: &InstanceMask, color: [u8; 3], alpha: f32, outline: bool) {
    let w = m.width;
    // a mask is pasted inside its frame; one that is not is skipped, never a panic
    if m.data.len() < w * m.height || m.x0 + w > canvas.width || m.y0 + m.height > canvas.height {
        return;
    }
    let table = BlendTable::new(color, alpha);
    for y in 0..m.height {
        let row = &m.data[y * w..(y + 1) * w];
        let up = y.checked_sub(1).map(|u| &m.data[u * w..(u + 1) * w]);
        let down = (y + 1 < m.height).then(|| &m.data[(y + 1) * w..(y + 2) * w]);
        let start = (m.y0 + y) * canvas.stride + m.x0 * 3;
        let Some(out) = canvas.data.get_mut(start..start + w * 3) else {
            continue;
        };
        for (x, (&v, px)) in row.iter().zip(out.chunks_exact_mut(3)).enumerate() {
            if v == 0 {
                continue;
            }
            let edge = outline
                && (x == 0
                    || x + 1 == w
                    || row[x - 1] == 0
                    || row[x + 1] == 0
                    || up.is_none_or(|u| u[x] == 0)
                    || down.is_none_or(|d| d[x] == 0));
            if edge {
                px.copy_from_slice(&color);
            } else {
                for (p, t) in px.iter_mut().zip(&table.0) {
                    *p = t[*p as usize];
                }
            }
        }
    }
}

impl Compositor {
    pub fn new(style: OverlayStyle) -> Self {
        // The bundled font is a fixed, valid TTF: failing to parse it would be a build defect, and
        // FontRef::try_from_slice has been checked by the unit test below.
        let font =
            FontRef::try_from_slice(FONT).unwrap_or_else(|_| unreachable!("bundled font parses"));
        Compositor { style, font }
    }

    pub fn draw(&self, canvas: &mut Canvas<'_>, detections: &[Detection], classes: &[String]) {
        self.draw_tracked(canvas, detections, classes, &[]);
    }

    /// As `draw`, with each tag reading `#id label score` where `track_ids` has the detection's id.
    pub fn draw_tracked(
        &self,
        canvas: &mut Canvas<'_>,
        detections: &[Detection],
        classes: &[String],
        track_ids: &[u64],
    ) {
        let s = &self.style;
        // masks first (lowest score first so the best sits on top), then boxes and labels
        for d in detections.iter().rev() {
            let m = &d.mask;
            if m.frame_width != canvas.width || m.frame_height != canvas.height {
                continue;
            }
            draw_mask(canvas, m, s.color(d.class_id), s.alpha, s.outline);
        }
        for (i, d) in detections.iter().enumerate() {
            let color = s.color(d.class_id);
            let [x1, y1, x2, y2] = d.bbox.map(|v| v.round() as i64);
            if s.boxes {
                let lw = s.line_width as i64;
                canvas.fill_rect(x1, y1, x2, y1 + lw, color);
                canvas.fill_rect(x1, y2 - lw, x2, y2, color);
                canvas.fill_rect(x1, y1, x1 + lw, y2, color);
                canvas.fill_rect(x2 - lw, y1, x2, y2, color);
            }
            if s.labels {
                let name = classes.get(d.class_id).map_or("?", String::as_str);
                let text = match track_ids.get(i) {
                    Some(id) => format!("#{id} {name} {:.2}", d.score),
                    None => format!("{name} {:.2}", d.score),
                };
                self.label(canvas, &text, x1, y1, color);
            }
        }
    }

    /// A filled tag with white text, above the box when there is room, else inside it.
    pub(crate) fn label(&self, canvas: &mut Canvas<'_>, text: &str, x: i64, y: i64, bg: [u8; 3]) {
        let scale = PxScale::from(self.style.font_size);
        let font = self.font.as_scaled(scale);
        let width: f32 = text
            .chars()
            .map(|ch| font.h_advance(font.glyph_id(ch)))
            .sum();
        let height = font.height().ceil() as i64;
        let top = if y - height >= 0 { y - height } else { y };
        canvas.fill_rect(x, top, x + width.ceil() as i64 + 4, top + height, bg);
        let mut caret = x as f32 + 2.0;
        for ch in text.chars() {
            let mut glyph = font.scaled_glyph(ch);
            glyph.position = ab_glyph::point(caret, top as f32 + font.ascent());
            caret += font.h_advance(glyph.id);
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let b = outline.px_bounds();
                outline.draw(|gx, gy, cov| {
                    let px = b.min.x as i64 + gx as i64;
                    let py = b.min.y as i64 + gy as i64;
                    if px >= 0
                        && py >= 0
                        && (px as usize) < canvas.width
                        && (py as usize) < canvas.height
                    {
                        canvas.blend(
                            px as usize,
                            py as usize,
                            [255, 255, 255],
                            cov.clamp(0.0, 1.0),
                        );
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::paste::InstanceMask;

    #[test]
    fn draws_mask_box_and_label() {
        assert!(FontRef::try_from_slice(FONT).is_ok());
        let (w, h) = (64usize, 48usize);
        let mut data = vec![0u8; w * h * 3];
        let mask = InstanceMask {
            frame_height: h,
            frame_width: w,
            x0: 20,
            y0: 20,
            width: 10,
            height: 10,
            data: vec![1; 100],
        };
        let det = Detection {
            class_id: 1,
            score: 0.9,
            bbox: [18.0, 18.0, 32.0, 32.0],
            mask,
        };
        let comp = Compositor::new(OverlayStyle::default());
        let mut canvas = Canvas {
            data: &mut data,
            width: w,
            height: h,
            stride: w * 3,
        };
        comp.draw(&mut canvas, &[det], &["bg".into(), "circle".into()]);
        let px = |x: usize, y: usize| {
            [
                data[(y * w + x) * 3],
                data[(y * w + x) * 3 + 1],
                data[(y * w + x) * 3 + 2],
            ]
        };
        let c = PALETTE[1];
        // interior: half-blended colour; outline: full colour
        assert_eq!(
            px(25, 25),
            [
                (c[0] as f32 * 0.5).round() as u8,
                (c[1] as f32 * 0.5).round() as u8,
                (c[2] as f32 * 0.5).round() as u8
            ]
        );
        assert_eq!(px(20, 25), c);
        // the label tag is drawn above the box
        assert!((0..18).any(|y| (18..40).any(|x| px(x, y) == [255, 255, 255] || px(x, y) == c)));
    }

    /// The blending table gives the bytes the per-pixel float blend gives, outline included, for
    /// masks of any shape on any background (overlapping masks, one at the frame's corner).
    #[test]
    fn table_blending_matches_the_float_blend() {
        let (w, h) = (40usize, 30usize);
        let mut seed = 12345u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let frame: Vec<u8> = (0..w * h * 3).map(|_| next() as u8).collect();
        let mut masks = Vec::new();
        for (x0, y0, mw, mh) in [(0, 0, 12, 9), (5, 4, 20, 15), (28, 21, 12, 9)] {
            let data = (0..mw * mh).map(|_| u8::from(next() % 3 != 0)).collect();
            let mask = InstanceMask {
                frame_height: h,
                frame_width: w,
                x0,
                y0,
                width: mw,
                height: mh,
                data,
            };
            masks.push(mask);
        }
        for (alpha, outline) in [(0.5, true), (0.37, false), (1.0, true), (0.0, false)] {
            let mut expected = frame.clone();
            let mut canvas = Canvas {
                data: &mut expected,
                width: w,
                height: h,
                stride: w * 3,
            };
            for (k, m) in masks.iter().enumerate() {
                let c = PALETTE[k];
                for y in 0..m.height {
                    for x in 0..m.width {
                        if !m.get(m.x0 + x, m.y0 + y) {
                            continue;
                        }
                        let off = |dx: i64, dy: i64| {
                            let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                            nx < 0
                                || ny < 0
                                || !m.get(m.x0 + nx as usize, m.y0 + ny as usize)
                                || nx as usize >= m.width
                                || ny as usize >= m.height
                        };
                        let edge = outline && (off(-1, 0) || off(1, 0) || off(0, -1) || off(0, 1));
                        canvas.blend(m.x0 + x, m.y0 + y, c, if edge { 1.0 } else { alpha });
                    }
                }
            }
            let mut got = frame.clone();
            let mut canvas = Canvas {
                data: &mut got,
                width: w,
                height: h,
                stride: w * 3,
            };
            for (k, m) in masks.iter().enumerate() {
                draw_mask(&mut canvas, m, PALETTE[k], alpha, outline);
            }
            assert!(got == expected, "alpha {alpha}, outline {outline}");
        }
    }
}
