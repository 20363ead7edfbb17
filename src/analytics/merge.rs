//! The duplicate merge: the model sometimes reports one object twice,
//! under two classes (per-class NMS cannot see it) or as the object and a part of it or the object with
//! some background around it (box NMS cannot see it); the best-scoring report wins. Visible masks of
//! two real objects do not overlap (the nearer hides the other), so a large overlap means one object.

use crate::model::mask_iou::intersection_shifted;
use crate::model::Detection;

/// Drops every detection whose mask overlaps a better-scoring one of another class with an IoU of
/// `iou` or more, or (any class) has `containment` or more of the smaller mask's pixels in common.
/// Returns how many were dropped.
pub fn merge_duplicates(detections: &mut Vec<Detection>, iou: f32, containment: f32) -> usize {
    if (iou >= 1.0 && containment >= 1.0) || detections.len() < 2 {
        return 0;
    }
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let areas: Vec<usize> = detections.iter().map(|d| d.mask.area()).collect();
    let mut keep = vec![true; detections.len()];
    for i in 0..detections.len() {
        if !keep[i] {
            continue;
        }
        for j in i + 1..detections.len() {
            if !keep[j] || crate::model::boxes::iou(&detections[i].bbox, &detections[j].bbox) <= 0.0
            {
                continue;
            }
            let inter = intersection_shifted(&detections[i].mask, 0, 0, &detections[j].mask);
            let union = areas[i] + areas[j] - inter;
            let smaller = areas[i].min(areas[j]);
            let cross_class = detections[j].class_id != detections[i].class_id;
            let same_pixels = cross_class && union > 0 && inter as f32 >= iou * union as f32;
            let contained =
                containment < 1.0 && smaller > 0 && inter as f32 >= containment * smaller as f32;
            if same_pixels || contained {
                keep[j] = false;
            }
        }
    }
    let before = detections.len();
    let mut k = keep.into_iter();
    detections.retain(|_| k.next().unwrap_or(true));
    before - detections.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::mask_iou::{mask_iou, mask_iou_shifted};
    use crate::model::paste::InstanceMask;

    /// A solid rectangular mask at (x, y) of size w×h in a 100×100 frame, and its detection.
    pub fn rect(x: usize, y: usize, w: usize, h: usize) -> InstanceMask {
        InstanceMask {
            frame_height: 100,
            frame_width: 100,
            x0: x,
            y0: y,
            width: w,
            height: h,
            data: vec![1; w * h],
        }
    }

    pub fn det(class_id: usize, score: f32, x: usize, y: usize, w: usize, h: usize) -> Detection {
        Detection {
            class_id,
            score,
            bbox: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
            mask: rect(x, y, w, h),
        }
    }

    #[test]
    fn mask_iou_counts_pixels_and_shifts() {
        let a = rect(0, 0, 10, 10);
        let b = rect(5, 0, 10, 10);
        assert!((mask_iou(&a, &b) - 50.0 / 150.0).abs() < 1e-6);
        assert!((mask_iou_shifted(&a, 100, 5, 0, &b, 100) - 1.0).abs() < 1e-6);
        assert_eq!(mask_iou_shifted(&a, 100, -20, 0, &b, 100), 0.0);
        // a hole in b: only set pixels count
        let mut c = rect(0, 0, 10, 10);
        c.data[0] = 0;
        assert!((mask_iou(&a, &c) - 99.0 / 100.0).abs() < 1e-6);
    }

    #[test]
    fn merges_cross_class_duplicates_by_iou() {
        let mut d = vec![
            det(2, 0.87, 10, 10, 20, 20), // the same pixels as the circle below, worse score
            det(1, 0.94, 10, 10, 20, 21),
            det(1, 0.60, 16, 10, 20, 20), // same class, IoU 0.52, 70% contained: only containment merges it
            det(3, 0.90, 60, 60, 10, 10), // elsewhere
        ];
        assert_eq!(merge_duplicates(&mut d, 0.5, 1.0), 1);
        let classes: Vec<usize> = d.iter().map(|d| d.class_id).collect();
        assert_eq!(classes, vec![1, 3, 1]);
        let mut d = vec![det(2, 0.87, 10, 10, 20, 20), det(1, 0.94, 10, 10, 20, 21)];
        assert_eq!(merge_duplicates(&mut d, 1.0, 1.0), 0);
    }

    #[test]
    fn merges_a_part_reported_as_a_second_instance() {
        let mut d = vec![
            det(2, 0.90, 10, 10, 20, 20), // the object
            det(2, 0.60, 10, 10, 20, 40), // the object and as much background: IoU 0.5, all contained
            det(2, 0.80, 31, 10, 20, 20), // its neighbour, touching: kept
        ];
        assert_eq!(merge_duplicates(&mut d, 0.5, 0.5), 1);
        assert_eq!(
            d.iter().map(|d| d.score).collect::<Vec<_>>(),
            vec![0.9, 0.8]
        );
        // half of the smaller mask in common is the limit
        let mut d = vec![det(1, 0.9, 0, 0, 20, 20), det(1, 0.8, 10, 0, 20, 20)];
        assert_eq!(merge_duplicates(&mut d, 1.0, 0.5), 1);
        let mut d = vec![det(1, 0.9, 0, 0, 20, 20), det(1, 0.8, 11, 0, 20, 20)];
        assert_eq!(merge_duplicates(&mut d, 1.0, 0.5), 0);
    }
}
