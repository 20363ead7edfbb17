//! Mask AP against COCO ground truth, computed on RLE without decoding (COCO's matching rules: per class,
//! detections by descending score, each matched to the best unmatched ground truth at IoU >= threshold,
//! 101-point interpolated precision).

use std::collections::HashMap;
use std::path::Path;

use crate::coco::CocoFile;
use crate::error::{Error, Result};
use crate::output::FrameRecord;
use crate::rle;

/// Ground truth instances by image id: (class, run lengths).
pub struct GroundTruth {
    pub images: Vec<u64>,
    by_image: HashMap<u64, Vec<(usize, Vec<u32>)>>,
}

impl GroundTruth {
    pub fn load(path: &Path) -> Result<Self> {
        let file = CocoFile::read(path)?;
        let mut by_image: HashMap<u64, Vec<(usize, Vec<u32>)>> = HashMap::new();
        for a in file.annotations.iter().filter(|a| a.iscrowd == 0) {
            by_image
                .entry(a.image_id)
                .or_default()
                .push((a.category_id, a.runs(path)?));
        }
        Ok(GroundTruth {
            images: file.images.into_iter().map(|i| i.id).collect(),
            by_image,
        })
    }

    pub fn instances(&self) -> usize {
        self.by_image.values().map(Vec::len).sum()
    }
}

/// Area of the ones of a run-length vector.
pub fn rle_area(c: &[u32]) -> u64 {
    c.iter().skip(1).step_by(2).map(|&v| v as u64).sum()
}

/// Pixels set in both masks, by walking the two run lists together.
pub fn rle_intersection(a: &[u32], b: &[u32]) -> u64 {
    let (mut i, mut j) = (0usize, 0usize);
    let (mut ra, mut rb) = (
        a.first().copied().unwrap_or(0) as u64,
        b.first().copied().unwrap_or(0) as u64,
    );
    let mut inter = 0u64;
    while i < a.len() && j < b.len() {
        let step = ra.min(rb);
        if i % 2 == 1 && j % 2 == 1 {
            inter += step;
        }
        ra -= step;
        rb -= step;
        while ra == 0 && i < a.len() {
            i += 1;
            ra = a.get(i).copied().unwrap_or(0) as u64;
        }
        while rb == 0 && j < b.len() {
            j += 1;
            rb = b.get(j).copied().unwrap_or(0) as u64;
        }
    }
    inter
}

pub fn rle_iou(a: &[u32], b: &[u32]) -> f64 {
    let inter = rle_intersection(a, b);
    let union = rle_area(a) + rle_area(b) - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// Mask AP at one IoU threshold, averaged over the classes that have ground truth. `records[i].frame`
/// (or the line index when absent) is the image id.
pub fn mask_ap(gt: &GroundTruth, records: &[FrameRecord], iou_threshold: f64) -> Result<f64> {
    // detections per class: (score, image, runs)
    let mut dets: HashMap<usize, Vec<(f32, u64, Vec<u32>)>> = HashMap::new();
    for (line, r) in records.iter().enumerate() {
        let image = r.frame.unwrap_or(line as u64);
        let mut inst: Vec<_> = r.instances.iter().collect();
        inst.sort_by(|a, b| b.score.total_cmp(&a.score));
        for i in inst.into_iter().take(100) {
            dets.entry(i.class_id).or_default().push((
                i.score,
                image,
                rle::from_string(&i.mask.counts)?,
            ));
        }
    }
    let mut classes: Vec<usize> = gt.by_image.values().flatten().map(|(c, _)| *c).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut aps = Vec::new();
    for class in classes {
        let n_gt = gt
            .by_image
            .values()
            .flatten()
            .filter(|(c, _)| *c == class)
            .count();
        let mut d = dets.remove(&class).unwrap_or_default();
        d.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used: HashMap<u64, Vec<bool>> = HashMap::new();
        let mut tp = Vec::with_capacity(d.len());
        for (_, image, runs) in &d {
            let gts = gt.by_image.get(image).map(Vec::as_slice).unwrap_or(&[]);
            let flags = used.entry(*image).or_insert_with(|| vec![false; gts.len()]);
            let mut best = (iou_threshold, None);
            for (k, (c, g)) in gts.iter().enumerate() {
                if *c != class || flags[k] {
                    continue;
                }
                let iou = rle_iou(runs, g);
                if iou >= best.0 {
                    best = (iou, Some(k));
                }
            }
            if let Some(k) = best.1 {
                flags[k] = true;
                tp.push(true);
            } else {
                tp.push(false);
            }
        }
        aps.push(average_precision(&tp, n_gt));
    }
    if aps.is_empty() {
        return Err(Error::Input("ground truth has no instances".into()));
    }
    Ok(aps.iter().sum::<f64>() / aps.len() as f64)
}

/// COCO's 101-point interpolated AP from the TP flags of score-sorted detections.
pub fn average_precision(tp: &[bool], n_gt: usize) -> f64 {
    if n_gt == 0 {
        return 0.0;
    }
    let (mut ctp, mut cfp) = (0usize, 0usize);
    let mut recall = Vec::with_capacity(tp.len());
    let mut precision = Vec::with_capacity(tp.len());
    for &t in tp {
        if t {
            ctp += 1;
        } else {
            cfp += 1;
        }
        recall.push(ctp as f64 / n_gt as f64);
        precision.push(ctp as f64 / (ctp + cfp) as f64);
    }
    for i in (0..precision.len().saturating_sub(1)).rev() {
        precision[i] = precision[i].max(precision[i + 1]);
    }
    let mut sum = 0.0;
    for k in 0..=100 {
        let r = k as f64 / 100.0;
        let idx = recall.partition_point(|&x| x < r);
        sum += precision.get(idx).copied().unwrap_or(0.0);
    }
    sum / 101.0
}

/// Reads JSON Lines written by maskstream.
pub fn read_jsonl(path: &Path) -> Result<Vec<FrameRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Input(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_iou_matches_bitmaps() {
        let a = [0u8, 1, 1, 0, 1, 1, 1, 0, 0];
        let b = [1u8, 1, 0, 0, 0, 1, 1, 1, 0];
        let (ra, rb) = (rle::encode_bitmap(&a, 3, 3), rle::encode_bitmap(&b, 3, 3));
        let inter = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **x == 1 && **y == 1)
            .count() as u64;
        assert_eq!(rle_intersection(&ra, &rb), inter);
        assert_eq!(rle_area(&ra), 5);
        let union = 5 + 5 - inter;
        assert!((rle_iou(&ra, &rb) - inter as f64 / union as f64).abs() < 1e-12);
        assert_eq!(rle_iou(&ra, &ra), 1.0);
    }

    #[test]
    fn ap_of_perfect_and_imperfect_rankings() {
        assert!((average_precision(&[true, true], 2) - 1.0).abs() < 1e-12);
        assert_eq!(average_precision(&[false, false], 2), 0.0);
        // one hit then a miss, half the ground truth found: precision 1 up to recall 0.5
        let ap = average_precision(&[true, false], 2);
        assert!((ap - 51.0 / 101.0).abs() < 1e-12, "{ap}");
    }
}
