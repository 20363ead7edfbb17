//! Box arithmetic shared by the RPN and the box head, in torchvision's exact order of operations:
//! BoxCoder.decode_single, clip_boxes_to_image, remove_small_boxes, nms and batched_nms.

pub type BoxF = [f32; 4];

/// Decodes `deltas` (dx, dy, dw, dh) against `anchor` with coder `weights` (torchvision BoxCoder).
#[inline]
pub fn decode(anchor: &BoxF, deltas: &[f32], weights: &[f32; 4], clip: f32) -> BoxF {
    let widths = anchor[2] - anchor[0];
    let heights = anchor[3] - anchor[1];
    let ctr_x = anchor[0] + 0.5 * widths;
    let ctr_y = anchor[1] + 0.5 * heights;
    let dx = deltas[0] / weights[0];
    let dy = deltas[1] / weights[1];
    let dw = (deltas[2] / weights[2]).min(clip);
    let dh = (deltas[3] / weights[3]).min(clip);
    let pred_ctr_x = dx * widths + ctr_x;
    let pred_ctr_y = dy * heights + ctr_y;
    let pred_w = dw.exp() * widths;
    let pred_h = dh.exp() * heights;
    let c_w = 0.5 * pred_w;
    let c_h = 0.5 * pred_h;
    [
        pred_ctr_x - c_w,
        pred_ctr_y - c_h,
        pred_ctr_x + c_w,
        pred_ctr_y + c_h,
    ]
}

/// Clamps x to [0, width] and y to [0, height] (size of the resized, unpadded image).
#[inline]
pub fn clip(b: &mut BoxF, height: f32, width: f32) {
    b[0] = b[0].clamp(0.0, width);
    b[1] = b[1].clamp(0.0, height);
    b[2] = b[2].clamp(0.0, width);
    b[3] = b[3].clamp(0.0, height);
}

/// torchvision's remove_small_boxes keeps boxes whose both sides are >= min_size.
#[inline]
pub fn is_large_enough(b: &BoxF, min_size: f32) -> bool {
    (b[2] - b[0]) >= min_size && (b[3] - b[1]) >= min_size
}

#[inline]
pub fn area(b: &BoxF) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

pub fn iou(a: &BoxF, b: &BoxF) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Indices of `order` sorted by descending score (stable, as torchvision's nms kernel sorts).
pub fn sort_by_score_desc(scores: &[f32], order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..scores.len());
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
}

/// Greedy NMS of torchvision's CPU kernel: suppress j when IoU(i, j) > threshold. `keep` receives
/// indices in descending score order. `scratch` buffers are reused across calls.
pub fn nms(
    boxes: &[BoxF],
    scores: &[f32],
    threshold: f32,
    keep: &mut Vec<usize>,
    scratch: &mut NmsScratch,
) {
    keep.clear();
    sort_by_score_desc(scores, &mut scratch.order);
    scratch.suppressed.clear();
    scratch.suppressed.resize(boxes.len(), false);
    scratch.areas.clear();
    scratch.areas.extend(boxes.iter().map(area));
    let order = &scratch.order;
    for (oi, &i) in order.iter().enumerate() {
        if scratch.suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let iarea = scratch.areas[i];
        for &j in &order[oi + 1..] {
            if scratch.suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let ovr = inter / (iarea + scratch.areas[j] - inter);
            if ovr > threshold {
                scratch.suppressed[j] = true;
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct NmsScratch {
    order: Vec<usize>,
    suppressed: Vec<bool>,
    areas: Vec<f32>,
    shifted: Vec<BoxF>,
    group_idx: Vec<usize>,
    group_boxes: Vec<BoxF>,
    group_scores: Vec<f32>,
    group_keep: Vec<usize>,
    kept_by_group: Vec<Vec<usize>>,
}

/// Boxes awaiting NMS, each with a score and a group (the RPN level, the class), and the buffers
/// the NMS reuses frame after frame. The RPN and the box head both end this way.
#[derive(Debug, Default)]
pub struct Candidates {
    boxes: Vec<BoxF>,
    scores: Vec<f32>,
    groups: Vec<usize>,
    keep: Vec<usize>,
    nms: NmsScratch,
}

impl Candidates {
    pub fn clear(&mut self) {
        self.boxes.clear();
        self.scores.clear();
        self.groups.clear();
    }

    pub fn push(&mut self, b: BoxF, score: f32, group: usize) {
        self.boxes.push(b);
        self.scores.push(score);
        self.groups.push(group);
    }

    /// torchvision's batched NMS, then the best `top_n`: (boxes, scores, groups) kept, best first.
    pub fn nms_top(&mut self, threshold: f32, top_n: usize) -> (Vec<BoxF>, Vec<f32>, Vec<usize>) {
        batched_nms_top(
            &self.boxes,
            &self.scores,
            &self.groups,
            threshold,
            top_n,
            &mut self.keep,
            &mut self.nms,
        );
        let k = &self.keep;
        (
            k.iter().map(|&i| self.boxes[i]).collect(),
            k.iter().map(|&i| self.scores[i]).collect(),
            k.iter().map(|&i| self.groups[i]).collect(),
        )
    }
}

/// NMS within groups (levels or classes), as torchvision's batched_nms: the coordinate-offset trick for
/// small inputs (<= 1000 boxes on CPU), per-group NMS otherwise. `keep` is in descending score order.
pub fn batched_nms(
    boxes: &[BoxF],
    scores: &[f32],
    groups: &[usize],
    threshold: f32,
    keep: &mut Vec<usize>,
    scratch: &mut NmsScratch,
) {
    keep.clear();
    if boxes.is_empty() {
        return;
    }
    if boxes.len() * 4 <= 4000 {
        nms_offset_groups(boxes, scores, groups, threshold, keep, scratch);
    } else {
        nms_per_group(boxes, scores, groups, threshold, keep, scratch);
    }
}

/// [`batched_nms`] truncated to the best `top_n`, without the work for boxes the cut drops: every box
/// is visited once in one stable score order (the order both paths end in) and compared only with
/// the boxes kept so far that could suppress it: all of them on the offset path (one NMS over the
/// shifted boxes, as torchvision), those of its own group on the per-group path. A box's fate only
/// depends on the kept boxes before it, so the kept boxes and their order are exactly
/// `batched_nms`'s first `top_n`; the RPN (200 of ~4,000 candidates) stops long before the end.
pub fn batched_nms_top(
    boxes: &[BoxF],
    scores: &[f32],
    groups: &[usize],
    threshold: f32,
    top_n: usize,
    keep: &mut Vec<usize>,
    scratch: &mut NmsScratch,
) {
    keep.clear();
    if boxes.is_empty() || top_n == 0 {
        return;
    }
    let offset_path = boxes.len() * 4 <= 4000;
    let mut shifted = std::mem::take(&mut scratch.shifted);
    shifted.clear();
    if offset_path {
        shift_groups(boxes, groups, &mut shifted);
    }
    let coords: &[BoxF] = if offset_path { &shifted } else { boxes };
    sort_by_score_desc(scores, &mut scratch.order);
    scratch.areas.clear();
    scratch.areas.extend(coords.iter().map(area));
    // kept boxes that can suppress a box of group g: all on the offset path (one list), else g's
    let n_lists = if offset_path {
        1
    } else {
        groups.iter().copied().max().map_or(0, |m| m + 1)
    };
    let kept = &mut scratch.kept_by_group;
    kept.iter_mut().for_each(Vec::clear);
    if kept.len() < n_lists {
        kept.resize_with(n_lists, Vec::new);
    }
    for &j in &scratch.order {
        let list = &mut kept[if offset_path { 0 } else { groups[j] }];
        let bj = &coords[j];
        // the same float operations as `nms`, with the kept box as `i`
        let suppressed = list.iter().any(|&i| {
            let bi = &coords[i];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            inter / (scratch.areas[i] + scratch.areas[j] - inter) > threshold
        });
        if suppressed {
            continue;
        }
        list.push(j);
        keep.push(j);
        if keep.len() == top_n {
            break;
        }
    }
    scratch.shifted = shifted;
}

/// Groups made disjoint by shifting each one's boxes past all others, then one NMS.
fn nms_offset_groups(
    boxes: &[BoxF],
    scores: &[f32],
    groups: &[usize],
    threshold: f32,
    keep: &mut Vec<usize>,
    scratch: &mut NmsScratch,
) {
    let mut shifted = std::mem::take(&mut scratch.shifted);
    shifted.clear();
    shift_groups(boxes, groups, &mut shifted);
    nms(&shifted, scores, threshold, keep, scratch);
    scratch.shifted = shifted;
}

/// torchvision's coordinate trick: each group's boxes moved past every other group's (by the group
/// index times the largest coordinate + 1), appended to `out`.
fn shift_groups(boxes: &[BoxF], groups: &[usize], out: &mut Vec<BoxF>) {
    let max_coord = boxes
        .iter()
        .flatten()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    out.extend(boxes.iter().zip(groups).map(|(b, &g)| {
        let off = g as f32 * (max_coord + 1.0);
        [b[0] + off, b[1] + off, b[2] + off, b[3] + off]
    }));
}

/// One NMS per group, then all kept boxes sorted by score (stable: ties stay in index order).
fn nms_per_group(
    boxes: &[BoxF],
    scores: &[f32],
    groups: &[usize],
    threshold: f32,
    keep: &mut Vec<usize>,
    scratch: &mut NmsScratch,
) {
    keep.clear();
    let n_groups = groups.iter().copied().max().map_or(0, |m| m + 1);
    let mut kept = vec![false; boxes.len()];
    let mut idx = std::mem::take(&mut scratch.group_idx);
    let mut gb = std::mem::take(&mut scratch.group_boxes);
    let mut gs = std::mem::take(&mut scratch.group_scores);
    let mut gk = std::mem::take(&mut scratch.group_keep);
    for g in 0..n_groups {
        idx.clear();
        idx.extend((0..boxes.len()).filter(|&i| groups[i] == g));
        if idx.is_empty() {
            continue;
        }
        gb.clear();
        gb.extend(idx.iter().map(|&i| boxes[i]));
        gs.clear();
        gs.extend(idx.iter().map(|&i| scores[i]));
        nms(&gb, &gs, threshold, &mut gk, scratch);
        for &k in &gk {
            kept[idx[k]] = true;
        }
    }
    keep.extend((0..boxes.len()).filter(|&i| kept[i]));
    keep.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    scratch.group_idx = idx;
    scratch.group_boxes = gb;
    scratch.group_scores = gs;
    scratch.group_keep = gk;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_identity_and_clamp() {
        let a = [10.0, 20.0, 30.0, 60.0];
        assert_eq!(decode(&a, &[0.0; 4], &[1.0; 4], 4.135), a);
        // dw is clamped at log(1000/16): the width can grow at most 62.5x
        let b = decode(
            &a,
            &[0.0, 0.0, 100.0, 0.0],
            &[1.0; 4],
            (1000.0f32 / 16.0).ln(),
        );
        assert!(((b[2] - b[0]) - 20.0 * 62.5).abs() < 1e-2);
    }

    #[test]
    fn nms_suppresses_overlaps_only_above_threshold() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
        ];
        let scores = [0.9, 0.95, 0.5];
        let (mut keep, mut s) = (Vec::new(), NmsScratch::default());
        nms(&boxes, &scores, 0.5, &mut keep, &mut s);
        assert_eq!(keep, vec![1, 2]);
        // IoU of the first two is 9/11 = 0.818: a higher threshold keeps both
        nms(&boxes, &scores, 0.85, &mut keep, &mut s);
        assert_eq!(keep, vec![1, 0, 2]);
    }

    #[test]
    fn batched_nms_keeps_other_groups() {
        let boxes = vec![[0.0, 0.0, 10.0, 10.0]; 2];
        let scores = [0.9, 0.8];
        let (mut keep, mut s) = (Vec::new(), NmsScratch::default());
        batched_nms(&boxes, &scores, &[0, 1], 0.5, &mut keep, &mut s);
        assert_eq!(keep, vec![0, 1]);
        batched_nms(&boxes, &scores, &[1, 1], 0.5, &mut keep, &mut s);
        assert_eq!(keep, vec![0]);
    }

    #[test]
    fn both_batched_nms_paths_keep_the_same_boxes_in_the_same_order() {
        // 1200 boxes 10 wide on a 1-pixel grid, so a group's (every third) neighbours overlap with
        // IoU 0.54 and some are suppressed; three groups; scores with ties
        let boxes: Vec<BoxF> = (0..1200)
            .map(|i| {
                let x = (i % 40) as f32;
                let y = (i / 40) as f32;
                [x, y, x + 10.0, y + 10.0]
            })
            .collect();
        let scores: Vec<f32> = (0..1200)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let groups: Vec<usize> = (0..1200).map(|i| i % 3).collect();
        let s = &mut NmsScratch::default();
        let (mut offset, mut per_group, mut dispatched) = (Vec::new(), Vec::new(), Vec::new());
        nms_offset_groups(&boxes, &scores, &groups, 0.5, &mut offset, s);
        nms_per_group(&boxes, &scores, &groups, 0.5, &mut per_group, s);
        batched_nms(&boxes, &scores, &groups, 0.5, &mut dispatched, s);
        assert!(
            offset.len() > 100 && offset.len() < 1200,
            "{}",
            offset.len()
        );
        assert_eq!(offset, per_group);
        assert_eq!(dispatched, per_group);
    }

    #[test]
    fn batched_nms_top_is_the_head_of_batched_nms_on_both_paths() {
        let s = &mut NmsScratch::default();
        // 600 boxes take the offset path, 1500 the per-group one; ties in the scores
        for n in [600usize, 1500] {
            let boxes: Vec<BoxF> = (0..n)
                .map(|i| {
                    let x = ((i * 37) % 53) as f32 * 1.5;
                    let y = ((i * 11) % 29) as f32 * 2.0;
                    let w = 6.0 + (i % 7) as f32;
                    [x, y, x + w, y + w * 1.3]
                })
                .collect();
            let scores: Vec<f32> = (0..n).map(|i| ((i * 7919) % 500) as f32 / 500.0).collect();
            let groups: Vec<usize> = (0..n).map(|i| (i * 13) % 5).collect();
            let mut full = Vec::new();
            batched_nms(&boxes, &scores, &groups, 0.6, &mut full, s);
            assert!(full.len() > 50 && full.len() < n, "{}", full.len());
            for top_n in [0, 1, 7, 50, full.len(), n + 10] {
                let mut top = Vec::new();
                batched_nms_top(&boxes, &scores, &groups, 0.6, top_n, &mut top, s);
                assert_eq!(top, full[..top_n.min(full.len())], "n {n} top {top_n}");
            }
        }
    }
}
