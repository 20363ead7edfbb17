//! Region proposal network, post-head (torchvision RegionProposalNetwork.filter_proposals, eval mode):
//! per level top-n by objectness logit, decode against anchors, clip, drop tiny and low-score boxes,
//! NMS per level, keep the best post_nms_top_n overall.

use crate::engine::Rpn as RpnConfig;

use super::anchors::AnchorGenerator;
use super::backbone::Features;
use super::boxes::{self, BoxF, Candidates};
use super::preprocess::Preprocessed;

/// RPN head output of one image on one level: objectness [A, h, w] and deltas [A*4, h, w] (NCHW slices).
#[derive(Debug, Clone, Copy)]
pub struct LevelHead<'a> {
    pub objectness: &'a [f32],
    pub deltas: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub anchors_per_location: usize,
}

/// Proposals of one image, best first, in resized-image pixels.
#[derive(Debug, Clone, Default)]
pub struct Proposals {
    pub boxes: Vec<BoxF>,
    pub scores: Vec<f32>,
}

#[derive(Debug, Default)]
pub struct ProposalScratch {
    logits: Vec<f32>,
    order: Vec<u32>,
    candidates: Candidates,
}

/// The region proposal network after its head: anchors, and the selection of proposals from them.
#[derive(Debug)]
pub struct RegionProposals {
    anchors: AnchorGenerator,
    scratch: ProposalScratch,
}

impl RegionProposals {
    pub fn new(anchors: AnchorGenerator) -> Self {
        RegionProposals {
            anchors,
            scratch: ProposalScratch::default(),
        }
    }

    /// Proposals of every image of the batch, best first, in resized-image pixels: N of [P, 4].
    pub fn forward(
        &mut self,
        features: &Features<'_>,
        images: &Preprocessed<'_>,
        cfg: &RpnConfig,
    ) -> Vec<Proposals> {
        let anchors = self.anchors.get(images.padded, &features.grids());
        images
            .sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let heads = features.rpn_heads(i);
                propose(&heads, anchors, size.resized, cfg, &mut self.scratch)
            })
            .collect()
    }
}

/// Selects proposals from the RPN head of one image. `anchors[l]` are the level's anchors in
/// (y, x, anchor) order; `image` is the resized (unpadded) (height, width) used for clipping.
pub fn propose(
    heads: &[LevelHead<'_>],
    anchors: &[Vec<BoxF>],
    image: (usize, usize),
    cfg: &RpnConfig,
    s: &mut ProposalScratch,
) -> Proposals {
    s.candidates.clear();
    let (img_h, img_w) = (image.0 as f32, image.1 as f32);
    for (level, (head, anchors)) in heads.iter().zip(anchors).enumerate() {
        let a = head.anchors_per_location;
        let hw = head.height * head.width;
        let n = hw * a;
        // flattened index i = (y * w + x) * A + anchor, as torchvision's permute to (N, H, W, A);
        // gathered once so the selection compares plain loads
        s.logits.clear();
        s.logits
            .extend((0..n).map(|i| head.objectness[(i % a) * hw + i / a]));
        let logits = &s.logits;
        let k = cfg.pre_nms_top_n.min(n);
        s.order.clear();
        s.order.extend(0..n as u32);
        if k < n {
            s.order.select_nth_unstable_by(k, |&x, &y| {
                logits[y as usize].total_cmp(&logits[x as usize])
            });
            s.order.truncate(k);
        }
        s.order
            .sort_unstable_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        for &i in &s.order {
            let i = i as usize;
            let (anchor, loc) = (i % a, i / a);
            let d = [
                head.deltas[(anchor * 4) * hw + loc],
                head.deltas[(anchor * 4 + 1) * hw + loc],
                head.deltas[(anchor * 4 + 2) * hw + loc],
                head.deltas[(anchor * 4 + 3) * hw + loc],
            ];
            let mut b = boxes::decode(&anchors[i], &d, &cfg.box_coder_weights, cfg.bbox_xform_clip);
            boxes::clip(&mut b, img_h, img_w);
            let score = sigmoid(logits[i]);
            if !boxes::is_large_enough(&b, cfg.min_size) || score < cfg.score_thresh {
                continue;
            }
            s.candidates.push(b, score, level);
        }
    }
    let (boxes, scores, _) = s.candidates.nms_top(cfg.nms_thresh, cfg.post_nms_top_n);
    Proposals { boxes, scores }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RpnConfig {
        RpnConfig {
            pre_nms_top_n: 2,
            post_nms_top_n: 10,
            nms_thresh: 0.7,
            min_size: 1e-3,
            score_thresh: 0.0,
            box_coder_weights: [1.0; 4],
            bbox_xform_clip: (1000.0f32 / 16.0).ln(),
        }
    }

    /// One level, a 1 x n grid, one anchor per location; zero deltas return the anchors.
    fn propose_one_row(anchors: &[Vec<BoxF>], objectness: &[f32]) -> Proposals {
        let deltas = vec![0.0; 4 * objectness.len()];
        let head = LevelHead {
            objectness,
            deltas: &deltas,
            height: 1,
            width: objectness.len(),
            anchors_per_location: 1,
        };
        propose(
            &[head],
            anchors,
            (100, 100),
            &cfg(),
            &mut ProposalScratch::default(),
        )
    }

    #[test]
    fn top_n_per_level_then_nms() {
        // one level, 1x3 grid, one anchor per location; zero deltas return the anchors
        let anchors = vec![vec![
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [50.0, 0.0, 60.0, 10.0],
        ]];
        let obj = [0.5, 2.0, 1.0];
        let p = propose_one_row(&anchors, &obj);
        // pre_nms_top_n = 2 keeps logits 2.0 and 1.0 only
        assert_eq!(
            p.boxes,
            vec![[1.0, 0.0, 11.0, 10.0], [50.0, 0.0, 60.0, 10.0]]
        );
        assert!((p.scores[0] - sigmoid(2.0)).abs() < 1e-7);
    }

    #[test]
    fn boxes_are_clipped_and_tiny_ones_dropped() {
        let anchors = vec![vec![[-5.0, -5.0, 20.0, 20.0], [200.0, 200.0, 210.0, 210.0]]];
        let obj = [1.0, 1.0];
        let p = propose_one_row(&anchors, &obj);
        // the second anchor clips to a zero-size box at the corner and is removed
        assert_eq!(p.boxes, vec![[0.0, 0.0, 20.0, 20.0]]);
    }
}
