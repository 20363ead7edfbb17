//! The instance metadata the elements exchange: one `GstVideoRegionOfInterestMeta` per instance, its
//! roi type the class label and its rectangle the box (rounded outwards, clipped to the frame), with
//! one parameter structure named [`INSTANCE`]:
//!
//! | field | type | |
//! |---|---|---|
//! | `score` | double | the model's score |
//! | `class-id` | uint | index into the engine's classes (0 is background, never reported) |
//! | `x1`, `y1`, `x2`, `y2` | double | the box in frame pixels, unrounded (as `detect`'s `box`) |
//! | `mask` | string | COCO compressed RLE of the full-frame mask (column-major, as `detect`'s `counts`) |
//! | `mask-height`, `mask-width` | uint | the RLE's size (COCO `size` is [height, width]) |
//! | `track-id` | guint64 | only once `masktracker` has run |
//!
//! The meta's id is the instance's index in the frame (instances are best first).

use std::ops::ControlFlow;

use gst_video::VideoRegionOfInterestMeta;
use maskstream::model::paste::InstanceMask;
use maskstream::model::Detection;
use maskstream::output::{InstanceRecord, RleRecord};
use maskstream::rle;

/// Name of the parameter structure on each region-of-interest meta.
pub const INSTANCE: &str = "maskstream/instance";

/// One instance as read back from a buffer.
#[derive(Debug, Clone)]
pub struct Instance {
    pub detection: Detection,
    pub label: String,
    pub track_id: Option<u64>,
}

/// The meta's rectangle for a box: outwards to whole pixels, inside the frame.
pub fn roi_rect(b: &[f32; 4], width: usize, height: usize) -> (u32, u32, u32, u32) {
    let (w, h) = (width as f32, height as f32);
    let x1 = b[0].floor().clamp(0.0, w);
    let y1 = b[1].floor().clamp(0.0, h);
    let x2 = b[2].ceil().clamp(x1, w);
    let y2 = b[3].ceil().clamp(y1, h);
    (x1 as u32, y1 as u32, (x2 - x1) as u32, (y2 - y1) as u32)
}

/// Attaches one instance to `buf`.
pub fn attach(buf: &mut gst::BufferRef, d: &Detection, label: &str, track_id: Option<u64>) {
    let (fw, fh) = (d.mask.frame_width, d.mask.frame_height);
    let counts = rle::to_string(&rle::encode_mask(&d.mask));
    let mut s = gst::Structure::builder(INSTANCE)
        .field("score", d.score as f64)
        .field("class-id", d.class_id as u32)
        .field("x1", d.bbox[0] as f64)
        .field("y1", d.bbox[1] as f64)
        .field("x2", d.bbox[2] as f64)
        .field("y2", d.bbox[3] as f64)
        .field("mask", counts)
        .field("mask-height", fh as u32)
        .field("mask-width", fw as u32);
    if let Some(id) = track_id {
        s = s.field("track-id", id);
    }
    // the buffer lists metas newest first: the meta's id keeps the order of the instances
    let index = buf
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter(|m| m.param(INSTANCE).is_some())
        .count();
    let mut meta = VideoRegionOfInterestMeta::add(buf, label, roi_rect(&d.bbox, fw, fh));
    meta.set_id(index as i32);
    meta.add_param(s.build());
}

/// The instances on `buf`, in the order they were attached (by meta id; metas without an [`INSTANCE`] structure
/// are not ours and are skipped; so are ours that do not parse, with `Err` naming why).
pub fn instances(buf: &gst::BufferRef) -> Vec<Result<Instance, String>> {
    let mut found: Vec<(i32, Result<Instance, String>)> = buf
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter_map(|m| {
            let p = m.param(INSTANCE)?;
            Some((m.id(), parse(m.roi_type(), p)))
        })
        .collect();
    found.sort_by_key(|(id, _)| *id);
    found.into_iter().map(|(_, i)| i).collect()
}

/// The instances on `buf` as `run`'s JSON records (no mask decoding), in order.
pub fn records(buf: &gst::BufferRef) -> Vec<Result<InstanceRecord, String>> {
    let mut found: Vec<(i32, Result<InstanceRecord, String>)> = buf
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter_map(|m| {
            let p = m.param(INSTANCE)?;
            Some((m.id(), record(m.roi_type(), p)))
        })
        .collect();
    found.sort_by_key(|(id, _)| *id);
    found.into_iter().map(|(_, i)| i).collect()
}

fn record(label: &str, s: &gst::StructureRef) -> Result<InstanceRecord, String> {
    let f64_field = |name: &str| s.get::<f64>(name).map_err(|e| format!("{name}: {e}"));
    let u32_field = |name: &str| s.get::<u32>(name).map_err(|e| format!("{name}: {e}"));
    Ok(InstanceRecord {
        class_id: u32_field("class-id")? as usize,
        label: label.to_string(),
        score: f64_field("score")? as f32,
        bbox: [
            f64_field("x1")? as f32,
            f64_field("y1")? as f32,
            f64_field("x2")? as f32,
            f64_field("y2")? as f32,
        ],
        track_id: s
            .get_optional::<u64>("track-id")
            .map_err(|e| format!("track-id: {e}"))?,
        mask: RleRecord {
            size: [
                u32_field("mask-height")? as usize,
                u32_field("mask-width")? as usize,
            ],
            counts: s
                .get::<&str>("mask")
                .map_err(|e| format!("mask: {e}"))?
                .to_string(),
        },
    })
}

fn parse(label: &str, s: &gst::StructureRef) -> Result<Instance, String> {
    let f64_field = |name: &str| s.get::<f64>(name).map_err(|e| format!("{name}: {e}"));
    let u32_field = |name: &str| s.get::<u32>(name).map_err(|e| format!("{name}: {e}"));
    let score = f64_field("score")? as f32;
    let class_id = u32_field("class-id")? as usize;
    let bbox = [
        f64_field("x1")? as f32,
        f64_field("y1")? as f32,
        f64_field("x2")? as f32,
        f64_field("y2")? as f32,
    ];
    let (h, w) = (
        u32_field("mask-height")? as usize,
        u32_field("mask-width")? as usize,
    );
    let counts = s.get::<&str>("mask").map_err(|e| format!("mask: {e}"))?;
    let bits = rle::from_string(counts)
        .and_then(|c| rle::decode_counts(&c, h, w))
        .map_err(|e| format!("mask: {e}"))?;
    let track_id = s
        .get_optional::<u64>("track-id")
        .map_err(|e| format!("track-id: {e}"))?;
    Ok(Instance {
        detection: Detection {
            class_id,
            score,
            bbox,
            mask: crop(&bits, h, w),
        },
        label: label.to_string(),
        track_id,
    })
}

/// A full-frame row-major bitmap as an [`InstanceMask`] over its set pixels.
pub fn crop(bits: &[u8], height: usize, width: usize) -> InstanceMask {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    for y in 0..height {
        let row = &bits[y * width..(y + 1) * width];
        if let (Some(first), Some(last)) = (
            row.iter().position(|&b| b != 0),
            row.iter().rposition(|&b| b != 0),
        ) {
            x0 = x0.min(first);
            x1 = x1.max(last + 1);
            y0 = y0.min(y);
            y1 = y + 1;
        }
    }
    if x0 == usize::MAX {
        return InstanceMask::empty((height, width));
    }
    let (mw, mh) = (x1 - x0, y1 - y0);
    let mut data = Vec::with_capacity(mw * mh);
    for y in y0..y1 {
        data.extend_from_slice(&bits[y * width + x0..y * width + x1]);
    }
    InstanceMask {
        frame_height: height,
        frame_width: width,
        x0,
        y0,
        width: mw,
        height: mh,
        data,
    }
}

/// Removes every instance meta from `buf` (other region-of-interest metas stay).
pub fn remove_all(buf: &mut gst::BufferRef) {
    buf.foreach_meta_mut(|mut m| {
        let ours = m
            .downcast_ref::<VideoRegionOfInterestMeta>()
            .is_some_and(|r| r.param(INSTANCE).is_some());
        ControlFlow::Continue(if ours {
            gst::buffer::BufferMetaForeachAction::Remove
        } else {
            gst::buffer::BufferMetaForeachAction::Keep
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_keeps_the_rle() {
        let (h, w) = (7, 9);
        let mut bits = vec![0u8; h * w];
        for (x, y) in [(2, 1), (3, 1), (5, 4), (2, 5)] {
            bits[y * w + x] = 1;
        }
        let m = crop(&bits, h, w);
        assert_eq!((m.x0, m.y0, m.width, m.height), (2, 1, 4, 5));
        assert_eq!(m.to_full(), bits);
        assert_eq!(rle::encode_mask(&m), rle::encode_bitmap(&bits, h, w));
        let empty = crop(&vec![0u8; h * w], h, w);
        assert_eq!(empty.area(), 0);
        assert_eq!(empty.to_full(), vec![0u8; h * w]);
    }

    #[test]
    fn rect_rounds_outwards_and_clips() {
        assert_eq!(roi_rect(&[1.5, 2.2, 10.1, 20.0], 100, 50), (1, 2, 10, 18));
        assert_eq!(
            roi_rect(&[-3.0, 40.0, 120.0, 60.0], 100, 50),
            (0, 40, 100, 10)
        );
    }
}
