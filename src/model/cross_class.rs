//! Cross-class duplicates: the box head sometimes reports one object twice, under two classes, and
//! per-class NMS cannot see it. With the manifest's `[mask] cross_class`, the lower-scoring report of a
//! pair whose masks cover nearly the same pixels keeps only a share of its score. It is not dropped:
//! when the better report's class is wrong it is the right one, and dropping it costs AP.

use crate::engine::CrossClass;

use super::mask_iou::intersection_shifted;
use super::paste::Instances;

/// Scores down (by `c.factor`) every detection whose mask has a mask IoU of `c.iou` or more with a
/// better-scoring detection of another class, judged on the scores as the box head gave them; then
/// sorts best first again. Returns how many were scored down.
pub fn soften(instances: &mut Instances, c: CrossClass) -> usize {
    if instances.len() < 2 {
        return 0;
    }
    instances.sort_by(|a, b| b.score.total_cmp(&a.score));
    let areas: Vec<usize> = instances.iter().map(|d| d.mask.area()).collect();
    let duplicate: Vec<bool> = (0..instances.len())
        .map(|j| {
            let d = &instances[j];
            (0..j).any(|i| {
                let better = &instances[i];
                if better.class_id == d.class_id {
                    return false;
                }
                let inter = intersection_shifted(&better.mask, 0, 0, &d.mask);
                let union = areas[i] + areas[j] - inter;
                union > 0 && inter as f32 >= c.iou * union as f32
            })
        })
        .collect();
    for (d, _) in instances.iter_mut().zip(&duplicate).filter(|(_, &dup)| dup) {
        d.score *= c.factor;
    }
    // stable: equal scores keep the box head's order
    instances.sort_by(|a, b| b.score.total_cmp(&a.score));
    duplicate.iter().filter(|&&d| d).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::paste::{Detection, InstanceMask};

    fn det(class_id: usize, score: f32, x: usize, w: usize) -> Detection {
        Detection {
            class_id,
            score,
            bbox: [x as f32, 0.0, (x + w) as f32, 10.0],
            mask: InstanceMask {
                frame_height: 10,
                frame_width: 100,
                x0: x,
                y0: 0,
                width: w,
                height: 10,
                data: vec![1; w * 10],
            },
        }
    }

    const C: CrossClass = CrossClass {
        iou: 0.85,
        factor: 0.5,
    };

    #[test]
    fn a_second_report_under_another_class_is_scored_down_not_dropped() {
        let mut d = vec![
            det(1, 0.95, 10, 20),
            det(2, 0.90, 10, 21), // IoU 20/21 with the circle: scored down to 0.45
            det(1, 0.80, 50, 20), // elsewhere
            det(3, 0.70, 13, 20), // IoU 17/23 and 18/23 < 0.85: kept as it is
        ];
        assert_eq!(soften(&mut d, C), 1);
        let got: Vec<(usize, f32)> = d.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(got, vec![(1, 0.95), (1, 0.80), (3, 0.70), (2, 0.45)]);
    }

    #[test]
    fn the_same_class_and_the_best_report_are_left_alone() {
        // same class: NMS's business, not this one's
        let mut d = vec![det(1, 0.9, 10, 20), det(1, 0.8, 10, 20)];
        assert_eq!(soften(&mut d, C), 0);
        // the better report keeps its score whatever order they come in
        let mut d = vec![det(2, 0.6, 10, 20), det(1, 0.9, 10, 20)];
        assert_eq!(soften(&mut d, C), 1);
        let got: Vec<(usize, f32)> = d.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(got, vec![(1, 0.9), (2, 0.3)]);
        // an empty mask is nobody's duplicate
        let mut e = det(2, 0.5, 10, 20);
        e.mask.data.fill(0);
        let mut d = vec![det(1, 0.9, 10, 20), e];
        assert_eq!(soften(&mut d, C), 0);
    }
}
