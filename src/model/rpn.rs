//! Region proposal network, post-head (torchvision RegionProposalNetwork.filter_proposals, eval mode):
//! per level top-n by objectness logit, decode against anchors, clip, drop tiny and low-score boxes,
//! NMS per level, keep the best post_nms_top_n overall.

use crate::engine::{FeatureLayout, Rpn as RpnConfig};

use super::anchors::AnchorGenerator;
use super::backbone::Features;
use super::boxes::{self, BoxF, Candidates};
use super::preprocess::Preprocessed;

/// RPN head output of one image on one level: objectness [A, h, w] and deltas [A*4, h, w] (NCHW
/// slices), or [h, w, A] and [h, w, A*4] (channels-last: torchvision's own flattening order).
#[derive(Debug, Clone, Copy)]
pub struct LevelHead<'a> {
    pub objectness: &'a [f32],
    pub deltas: &'a [f32],
    pub layout: FeatureLayout,
    pub height: usize,
    pub width: usize,
    pub anchors_per_location: usize,
}

impl LevelHead<'_> {
    /// Logit of flattened index i = (y * w + x) * A + anchor, torchvision's order.
    #[inline]
    fn logit(&self, i: usize) -> f32 {
        match self.layout {
            FeatureLayout::Nhwc => self.objectness[i],
            FeatureLayout::Nchw => {
                let a = self.anchors_per_location;
                self.objectness[(i % a) * self.height * self.width + i / a]
            }
        }
    }

    /// The four box deltas of flattened index i.
    #[inline]
    fn delta(&self, i: usize) -> [f32; 4] {
        match self.layout {
            FeatureLayout::Nhwc => {
                let d = &self.deltas[4 * i..4 * i + 4];
                [d[0], d[1], d[2], d[3]]
            }
            FeatureLayout::Nchw => {
                let (a, hw) = (self.anchors_per_location, self.height * self.width);
                let (anchor, loc) = (i % a, i / a);
                std::array::from_fn(|k| self.deltas[(anchor * 4 + k) * hw + loc])
            }
        }
    }
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
        let n = head.height * head.width * head.anchors_per_location;
        // flattened index i = (y * w + x) * A + anchor, as torchvision's permute to (N, H, W, A);
        // channels-last heads are in that order already, others are gathered once so the selection
        // compares plain loads
        let logits: &[f32] = match head.layout {
            FeatureLayout::Nhwc => &head.objectness[..n],
            FeatureLayout::Nchw => {
                s.logits.clear();
                s.logits.extend((0..n).map(|i| head.logit(i)));
                &s.logits
            }
        };
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
            let d = head.delta(i);
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
            layout: FeatureLayout::Nchw,
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
    fn channels_last_heads_give_the_same_proposals() {
        // a 3x4 grid, 3 anchors per location, varied logits and deltas, laid out both ways
        let (h, w, a) = (3usize, 4usize, 3usize);
        let n = h * w * a;
        let anchors = vec![(0..n)
            .map(|i| {
                let (loc, k) = (i / a, i % a);
                let (y, x) = ((loc / w) as f32 * 8.0, (loc % w) as f32 * 8.0);
                let s = 6.0 + 4.0 * k as f32;
                [x, y, x + s, y + s]
            })
            .collect::<Vec<BoxF>>()];
        // values by torchvision's flattened index i = (y * w + x) * A + anchor
        let logit = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 4.0;
        let delta = |i: usize, k: usize| ((i * 13 + k * 7) % 11) as f32 / 20.0 - 0.25;
        let nhwc_obj: Vec<f32> = (0..n).map(logit).collect();
        let nhwc_del: Vec<f32> = (0..4 * n).map(|j| delta(j / 4, j % 4)).collect();
        let mut nchw_obj = vec![0.0; n];
        let mut nchw_del = vec![0.0; 4 * n];
        for i in 0..n {
            let (loc, k) = (i / a, i % a);
            nchw_obj[k * h * w + loc] = logit(i);
            for c in 0..4 {
                nchw_del[(k * 4 + c) * h * w + loc] = delta(i, c);
            }
        }
        let cfg = RpnConfig {
            pre_nms_top_n: 20,
            ..cfg()
        };
        let run = |objectness: &[f32], deltas: &[f32], layout| {
            let head = LevelHead {
                objectness,
                deltas,
                layout,
                height: h,
                width: w,
                anchors_per_location: a,
            };
            propose(
                &[head],
                &anchors,
                (40, 40),
                &cfg,
                &mut ProposalScratch::default(),
            )
        };
        let first = run(&nchw_obj, &nchw_del, FeatureLayout::Nchw);
        let last = run(&nhwc_obj, &nhwc_del, FeatureLayout::Nhwc);
        assert!(first.boxes.len() > 3, "{first:?}");
        assert_eq!(first.boxes, last.boxes);
        assert_eq!(first.scores, last.scores);
        // and the layouts are not interchangeable
        let wrong = run(&nhwc_obj, &nhwc_del, FeatureLayout::Nchw);
        assert_ne!(first.boxes, wrong.boxes);
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
