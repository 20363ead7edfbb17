//! Paste: map boxes back to the original frame and lay each R x R mask over its box, then threshold.
//! Two geometries ([`PasteMode`]): torchvision's paste_masks_in_image (pad the mask by one pixel, grow
//! the box by (R+2)/R about its centre, truncate to integers, bilinear-resize to the box size + 1) and
//! the exact one (bilinear sample at every pixel centre, the box in real coordinates). Only the part
//! inside the frame is computed.

use crate::engine::{MaskSection, PasteMode};

use super::box_head::Detections;
use super::boxes::BoxF;
use super::device::Device;
use super::mask_head::MaskProbs;
use super::preprocess::{linear_taps, resize_plane, LinearTap, Preprocessed};

/// One instance found in a frame.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Index into the engine's classes (0 is background, never reported).
    pub class_id: usize,
    pub score: f32,
    /// [x1, y1, x2, y2] in frame pixels.
    pub bbox: BoxF,
    pub mask: InstanceMask,
}

/// The instances of one frame, best first.
pub type Instances = Vec<Detection>;

/// Maps every image's detections back to its frame and pastes their masks there (on `device`).
pub fn instances(
    device: &mut dyn Device,
    detections: Vec<Detections>,
    probs: &MaskProbs<'_>,
    images: &Preprocessed<'_>,
    mask: &MaskSection,
) -> Vec<Instances> {
    let plane = probs.resolution * probs.resolution;
    let mut offset = 0;
    detections
        .into_iter()
        .zip(&images.sizes)
        .map(|(d, size)| {
            let boxes: Vec<BoxF> = d
                .boxes
                .iter()
                .map(|b| to_original(b, size.resized, size.original))
                .collect();
            let n = boxes.len();
            let p = &probs.data[offset * plane..(offset + n) * plane];
            offset += n;
            let masks = device.paste(p, probs.resolution, &boxes, size.original, mask);
            boxes
                .into_iter()
                .zip(masks)
                .zip(d.scores.iter().zip(&d.labels))
                .map(|((bbox, instance), (&score, &class_id))| Detection {
                    class_id,
                    score,
                    bbox: box_from_mask(bbox, &instance, mask.box_from_mask),
                    mask: instance,
                })
                .collect()
        })
        .collect()
}

/// The output box: `share` of the way from the box head's `bbox` to the bounds of its pasted mask
/// (pixel edges); an empty mask leaves the box as it is.
pub fn box_from_mask(bbox: BoxF, mask: &InstanceMask, share: f32) -> BoxF {
    if share <= 0.0 {
        return bbox;
    }
    let Some(bounds) = mask.bounds() else {
        return bbox;
    };
    std::array::from_fn(|i| bbox[i] + share * (bounds[i] - bbox[i]))
}

/// A binary instance mask stored over its box: `data[y * width + x]` is 0 or 1 at frame pixel
/// (x0 + x, y0 + y). Pixels outside the box are 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceMask {
    pub frame_height: usize,
    pub frame_width: usize,
    pub x0: usize,
    pub y0: usize,
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl InstanceMask {
    /// No pixel set, in a frame of `frame` (height, width).
    pub fn empty(frame: (usize, usize)) -> Self {
        InstanceMask {
            frame_height: frame.0,
            frame_width: frame.1,
            ..Default::default()
        }
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        x >= self.x0
            && y >= self.y0
            && x < self.x0 + self.width
            && y < self.y0 + self.height
            && self.data[(y - self.y0) * self.width + (x - self.x0)] != 0
    }

    pub fn area(&self) -> usize {
        self.data.iter().map(|&v| v as usize).sum()
    }

    /// [x1, y1, x2, y2] of the set pixels (their outer edges, frame pixels); None when none is set.
    pub fn bounds(&self) -> Option<BoxF> {
        let w = self.width.max(1);
        let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
        for (i, _) in self.data.iter().enumerate().filter(|(_, &v)| v != 0) {
            let (x, y) = (i % w, i / w);
            x1 = x1.min(x);
            x2 = x2.max(x + 1);
            y1 = y1.min(y);
            y2 = y2.max(y + 1);
        }
        (x1 != usize::MAX).then(|| {
            let (ox, oy) = (self.x0 as f32, self.y0 as f32);
            [
                ox + x1 as f32,
                oy + y1 as f32,
                ox + x2 as f32,
                oy + y2 as f32,
            ]
        })
    }

    /// Row-major full-frame bitmap.
    pub fn to_full(&self) -> Vec<u8> {
        let mut full = vec![0u8; self.frame_height * self.frame_width];
        for y in 0..self.height {
            let dst = (self.y0 + y) * self.frame_width + self.x0;
            full[dst..dst + self.width]
                .copy_from_slice(&self.data[y * self.width..(y + 1) * self.width]);
        }
        full
    }
}

/// transform.postprocess's resize_boxes: scale by original / resized, per axis, in f32.
pub fn to_original(b: &BoxF, resized: (usize, usize), original: (usize, usize)) -> BoxF {
    let rh = original.0 as f32 / resized.0 as f32;
    let rw = original.1 as f32 / resized.1 as f32;
    [b[0] * rw, b[1] * rh, b[2] * rw, b[3] * rh]
}

#[derive(Debug, Default)]
pub struct PasteScratch {
    padded: Vec<f32>,
    resized: Vec<f32>,
}

/// Pastes one `resolution x resolution` probability mask for box `b` (frame pixels) as `mask` says.
pub fn paste(
    probs: &[f32],
    resolution: usize,
    b: &BoxF,
    frame: (usize, usize),
    mask: &MaskSection,
    s: &mut PasteScratch,
) -> InstanceMask {
    match mask.paste {
        PasteMode::Torchvision => paste_torchvision(
            probs,
            resolution,
            b,
            frame,
            mask.paste_padding,
            mask.threshold,
            s,
        ),
        PasteMode::Exact => paste_exact(probs, resolution, b, frame, mask.threshold, s),
    }
}

/// torchvision's paste of one mask.
fn paste_torchvision(
    probs: &[f32],
    resolution: usize,
    b: &BoxF,
    frame: (usize, usize),
    padding: usize,
    threshold: f32,
    s: &mut PasteScratch,
) -> InstanceMask {
    let (im_h, im_w) = frame;
    let m = resolution;
    let pm = m + 2 * padding;
    // expand_masks: zero border
    s.padded.clear();
    s.padded.resize(pm * pm, 0.0);
    for y in 0..m {
        let dst = (y + padding) * pm + padding;
        s.padded[dst..dst + m].copy_from_slice(&probs[y * m..(y + 1) * m]);
    }
    // expand_boxes: the scale is a Python float applied to an f32 tensor, hence f32 here
    let scale = (pm as f64 / m as f64) as f32;
    let w_half = (b[2] - b[0]) * 0.5 * scale;
    let h_half = (b[3] - b[1]) * 0.5 * scale;
    let x_c = (b[2] + b[0]) * 0.5;
    let y_c = (b[3] + b[1]) * 0.5;
    // .to(torch.int64) truncates toward zero
    let bx0 = (x_c - w_half) as i64;
    let by0 = (y_c - h_half) as i64;
    let bx1 = (x_c + w_half) as i64;
    let by1 = (y_c + h_half) as i64;
    let w = (bx1 - bx0 + 1).max(1) as usize;
    let h = (by1 - by0 + 1).max(1) as usize;
    let x_0 = bx0.max(0);
    let x_1 = (bx1 + 1).min(im_w as i64);
    let y_0 = by0.max(0);
    let y_1 = (by1 + 1).min(im_h as i64);
    if x_1 <= x_0 || y_1 <= y_0 {
        return InstanceMask::empty(frame);
    }
    // only the visible window of the resized mask: rows y_0-by0 .. y_1-by0, same for columns
    let rows = linear_taps(pm, h);
    let cols = linear_taps(pm, w);
    let (r0, r1) = ((y_0 - by0) as usize, (y_1 - by0) as usize);
    let (c0, c1) = ((x_0 - bx0) as usize, (x_1 - bx0) as usize);
    let origin = (x_0 as usize, y_0 as usize);
    let (rows, cols) = (&rows[r0..r1], &cols[c0..c1]);
    window_mask(
        &s.padded,
        pm,
        rows,
        cols,
        origin,
        frame,
        threshold,
        &mut s.resized,
    )
}

/// The exact paste of one mask: frame pixel x takes the mask at u = (x + 0.5 - x1) / (x2 - x1) * R - 0.5
/// (mask cells at their centres, as ROIAlign sampled them), bilinear, zero outside the mask (as
/// grid_sample with align_corners=False and zero padding). engines/tools/model.py's `paste_exact` is
/// the reference, in the same f32 operations.
fn paste_exact(
    probs: &[f32],
    resolution: usize,
    b: &BoxF,
    frame: (usize, usize),
    threshold: f32,
    s: &mut PasteScratch,
) -> InstanceMask {
    let (im_h, im_w) = frame;
    let (Some((x0, cols)), Some((y0, rows))) = (
        exact_taps(b[0], b[2], resolution, im_w),
        exact_taps(b[1], b[3], resolution, im_h),
    ) else {
        return InstanceMask::empty(frame);
    };
    window_mask(
        probs,
        resolution,
        &rows,
        &cols,
        (x0, y0),
        frame,
        threshold,
        &mut s.resized,
    )
}

/// The frame window at `origin` (x, y) of a mask: `src` (rows `src_w` wide) resized through the taps
/// (one per window row and column, both geometries), the pixels above `threshold` set.
#[allow(clippy::too_many_arguments)]
fn window_mask(
    src: &[f32],
    src_w: usize,
    rows: &[LinearTap],
    cols: &[LinearTap],
    origin: (usize, usize),
    frame: (usize, usize),
    threshold: f32,
    resized: &mut Vec<f32>,
) -> InstanceMask {
    let (width, height) = (cols.len(), rows.len());
    resized.clear();
    resized.resize(width * height, 0.0);
    resize_plane(src, src_w, rows, cols, resized, width);
    InstanceMask {
        x0: origin.0,
        y0: origin.1,
        width,
        height,
        data: resized.iter().map(|&p| (p > threshold) as u8).collect(),
        ..InstanceMask::empty(frame)
    }
}

/// Taps along one axis for the exact paste of a box from `lo` to `hi` over `r` mask cells: the first
/// frame pixel and one tap per pixel. The window reaches a mask cell past the box on each side (plus a
/// pixel for rounding), where the mask fades to zero; taps outside the mask weigh zero. None when the
/// window misses the frame or the box is not finite.
fn exact_taps(lo: f32, hi: f32, r: usize, size: usize) -> Option<(usize, Vec<LinearTap>)> {
    if !(lo.is_finite() && hi.is_finite()) || r == 0 {
        return None;
    }
    let extent = (hi - lo).max(f32::MIN_POSITIVE);
    let cell = extent / r as f32;
    let first = ((lo - cell).floor() - 1.0).max(0.0);
    let last = ((hi + cell).ceil() + 1.0).min(size as f32);
    if first >= last {
        return None;
    }
    let (first, last) = (first as usize, last as usize);
    let cells = r as f32;
    let taps = (first..last)
        .map(|x| {
            let u = (x as f32 + 0.5 - lo) / extent * cells - 0.5;
            let f = u.floor();
            let w1 = u - f;
            let tap = |i: f32, w: f32| {
                if i >= 0.0 && i < cells {
                    (i as usize, w)
                } else {
                    (0, 0.0)
                }
            };
            let (i0, w0) = tap(f, 1.0 - w1);
            let (i1, w1) = tap(f + 1.0, w1);
            LinearTap { i0, i1, w0, w1 }
        })
        .collect();
    Some((first, taps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mask_fills_its_box() {
        let probs = vec![1.0; 28 * 28];
        let m = paste_torchvision(
            &probs,
            28,
            &[10.0, 20.0, 66.0, 76.0],
            (100, 100),
            1,
            0.5,
            &mut PasteScratch::default(),
        );
        // the padded border blends to < 0.5 only in the grown margin: the box itself is covered
        assert!(m.get(10, 20) && m.get(65, 75));
        assert!(!m.get(5, 15) && !m.get(70, 80));
        assert_eq!(m.to_full().iter().filter(|&&v| v == 1).count(), m.area());
    }

    #[test]
    fn boxes_outside_or_clipped() {
        let probs = vec![1.0; 4];
        let m = paste_torchvision(
            &probs,
            2,
            &[200.0, 200.0, 220.0, 220.0],
            (100, 100),
            1,
            0.5,
            &mut PasteScratch::default(),
        );
        assert_eq!(m.area(), 0);
        let m = paste_torchvision(
            &probs,
            2,
            &[90.0, 90.0, 120.0, 120.0],
            (100, 100),
            1,
            0.5,
            &mut PasteScratch::default(),
        );
        assert_eq!((m.x0 + m.width, m.y0 + m.height), (100, 100));
        assert!(m.get(99, 99));
    }

    fn section(paste: PasteMode) -> MaskSection {
        MaskSection {
            threshold: 0.5,
            resolution: 28,
            paste_padding: 1,
            paste,
            box_from_mask: 0.0,
            cross_class: None,
        }
    }

    #[test]
    fn output_box_moves_the_given_share_towards_the_mask_bounds() {
        let mut m = InstanceMask {
            frame_height: 100,
            frame_width: 100,
            x0: 10,
            y0: 20,
            width: 8,
            height: 6,
            data: vec![0; 48],
        };
        let b = [10.0, 20.0, 18.0, 26.0];
        assert_eq!(m.bounds(), None);
        assert_eq!(box_from_mask(b, &m, 0.5), b, "an empty mask keeps the box");
        // set pixels (x 12..=14, y 21..=23) in frame coordinates
        for y in 1..4 {
            for x in 2..5 {
                m.data[y * 8 + x] = 1;
            }
        }
        assert_eq!(m.bounds(), Some([12.0, 21.0, 15.0, 24.0]));
        assert_eq!(box_from_mask(b, &m, 0.0), b);
        assert_eq!(box_from_mask(b, &m, 1.0), [12.0, 21.0, 15.0, 24.0]);
        assert_eq!(box_from_mask(b, &m, 0.5), [11.0, 20.5, 16.5, 25.0]);
    }

    fn paste_ones(b: BoxF, mode: PasteMode) -> InstanceMask {
        let probs = vec![1.0; 28 * 28];
        let s = &mut PasteScratch::default();
        paste(&probs, 28, &b, (100, 100), &section(mode), s)
    }

    #[test]
    fn exact_paste_covers_its_box_and_torchvisions_a_pixel_more() {
        let b = [10.0, 20.0, 50.0, 76.0];
        let m = paste_ones(b, PasteMode::Exact);
        assert_eq!(m.area(), 40 * 56);
        assert!(m.get(10, 20) && m.get(49, 75));
        assert!(!m.get(9, 20) && !m.get(50, 75) && !m.get(10, 19) && !m.get(10, 76));
        let tv = paste_ones(b, PasteMode::Torchvision);
        assert!(tv.area() >= 41 * 57, "{}", tv.area());
        assert!(tv.get(50, 48) && tv.get(30, 76));
    }

    #[test]
    fn exact_paste_samples_the_mask_at_pixel_centres() {
        // a ramp along x over 2-pixel cells: pixel x reads cell u = (x + 0.5) / 2 - 0.5, worth u / 27,
        // above 0.5 from x = 28; the box's right edge fades out after the last cell's centre (x = 55).
        // The box overhangs the frame vertically, so every row of the frame is inside the mask.
        let probs: Vec<f32> = (0..28 * 28).map(|i| (i % 28) as f32 / 27.0).collect();
        let s = &mut PasteScratch::default();
        let b = [0.0, -10.0, 56.0, 110.0];
        let m = paste(&probs, 28, &b, (100, 100), &section(PasteMode::Exact), s);
        assert_eq!(m.area(), 28 * 100);
        assert!(m.get(28, 0) && m.get(55, 99) && !m.get(27, 50) && !m.get(56, 50));
    }

    #[test]
    fn exact_paste_clips_to_the_frame_and_skips_bad_boxes() {
        let m = paste_ones([90.0, 90.0, 120.0, 120.0], PasteMode::Exact);
        assert_eq!((m.x0 + m.width, m.y0 + m.height), (100, 100));
        assert_eq!(m.area(), 10 * 10);
        for b in [
            [200.0, 200.0, 220.0, 220.0],
            [-30.0, -30.0, -10.0, -10.0],
            [f32::NAN, 0.0, 10.0, 10.0],
            [0.0, 0.0, f32::INFINITY, 10.0],
        ] {
            assert_eq!(paste_ones(b, PasteMode::Exact).area(), 0, "{b:?}");
        }
        // a box thinner than a pixel still pastes without dividing by zero
        assert!(paste_ones([40.0, 40.0, 40.0, 60.0], PasteMode::Exact).area() <= 20);
    }

    #[test]
    fn boxes_scale_back_per_axis() {
        assert_eq!(
            to_original(&[10.0, 10.0, 20.0, 20.0], (320, 568), (360, 640))[3],
            20.0 * (360.0 / 320.0)
        );
    }
}
