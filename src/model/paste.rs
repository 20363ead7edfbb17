//! Paste (torchvision paste_masks_in_image): map boxes back to the original frame, pad the R x R mask by
//! one pixel, grow the box by (R+2)/R about its centre, truncate to integers, bilinear-resize the mask to
//! the box size + 1 and threshold. Only the part inside the frame is computed.

use crate::engine::MaskSection;

use super::box_head::Detections;
use super::boxes::BoxF;
use super::device::Device;
use super::mask_head::MaskProbs;
use super::preprocess::{linear_taps, resize_plane, Preprocessed};

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
                .map(|((bbox, mask), (&score, &class_id))| Detection {
                    class_id,
                    score,
                    bbox,
                    mask,
                })
                .collect()
        })
        .collect()
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

/// Pastes one `resolution x resolution` probability mask for box `b` (frame pixels).
pub fn paste(
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
    let mut out = InstanceMask {
        frame_height: im_h,
        frame_width: im_w,
        ..Default::default()
    };
    if x_1 <= x_0 || y_1 <= y_0 {
        return out;
    }
    // only the visible window of the resized mask: rows y_0-by0 .. y_1-by0, same for columns
    let rows = linear_taps(pm, h);
    let cols = linear_taps(pm, w);
    let (r0, r1) = ((y_0 - by0) as usize, (y_1 - by0) as usize);
    let (c0, c1) = ((x_0 - bx0) as usize, (x_1 - bx0) as usize);
    let (ow, oh) = (c1 - c0, r1 - r0);
    s.resized.clear();
    s.resized.resize(ow * oh, 0.0);
    resize_plane(
        &s.padded,
        pm,
        &rows[r0..r1],
        &cols[c0..c1],
        &mut s.resized,
        ow,
    );
    out.x0 = x_0 as usize;
    out.y0 = y_0 as usize;
    out.width = ow;
    out.height = oh;
    out.data = s.resized.iter().map(|&p| (p > threshold) as u8).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mask_fills_its_box() {
        let probs = vec![1.0; 28 * 28];
        let m = paste(
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
        let m = paste(
            &probs,
            2,
            &[200.0, 200.0, 220.0, 220.0],
            (100, 100),
            1,
            0.5,
            &mut PasteScratch::default(),
        );
        assert_eq!(m.area(), 0);
        let m = paste(
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

    #[test]
    fn boxes_scale_back_per_axis() {
        assert_eq!(
            to_original(&[10.0, 10.0, 20.0, 20.0], (320, 568), (360, 640))[3],
            20.0 * (360.0 / 320.0)
        );
    }
}
