//! Box head post-processing (torchvision RoIHeads.postprocess_detections): softmax, per-class decode with
//! the ROI coder weights, clip, drop background / low scores / tiny boxes, NMS per class, top-k.
//! The fc6/fc7 + predictor layers themselves are the `box_head.onnx` graph.

use crate::boxes::{self, BoxF, Candidates};
use crate::engine::RoiHeads;

/// Detections of one image in resized-image pixels, best first.
#[derive(Debug, Clone, Default)]
pub struct RawDetections {
    pub boxes: Vec<BoxF>,
    pub scores: Vec<f32>,
    /// Class index into the manifest's classes (never 0, the background).
    pub labels: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct DetectionScratch {
    probs: Vec<f32>,
    candidates: Candidates,
}

/// `class_logits` [P, K] and `box_deltas` [P, 4K] for `proposals` [P] of one image.
pub fn postprocess(
    proposals: &[BoxF],
    class_logits: &[f32],
    box_deltas: &[f32],
    num_classes: usize,
    image: (usize, usize),
    cfg: &RoiHeads,
    s: &mut DetectionScratch,
) -> RawDetections {
    let k = num_classes;
    let (img_h, img_w) = (image.0 as f32, image.1 as f32);
    s.candidates.clear();
    s.probs.resize(k, 0.0);
    for (p, proposal) in proposals.iter().enumerate() {
        softmax(&class_logits[p * k..(p + 1) * k], &mut s.probs);
        // torchvision flattens [P, K-1] proposal-major, class-minor
        for (c, &score) in s.probs.iter().enumerate().skip(1) {
            if score <= cfg.score_thresh {
                continue;
            }
            let d = &box_deltas[p * 4 * k + 4 * c..p * 4 * k + 4 * c + 4];
            let mut b = boxes::decode(proposal, d, &cfg.box_coder_weights, cfg.bbox_xform_clip);
            boxes::clip(&mut b, img_h, img_w);
            if !boxes::is_large_enough(&b, cfg.min_box_size) {
                continue;
            }
            s.candidates.push(b, score, c);
        }
    }
    let (boxes, scores, labels) = s.candidates.nms_top(cfg.nms_thresh, cfg.detections_per_img);
    RawDetections {
        boxes,
        scores,
        labels,
    }
}

/// Numerically stable softmax (exp(x - max) / sum), as torch's.
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RoiHeads {
        RoiHeads {
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
            min_box_size: 1e-2,
            box_coder_weights: [10.0, 10.0, 5.0, 5.0],
            bbox_xform_clip: (1000.0f32 / 16.0).ln(),
        }
    }

    #[test]
    fn picks_classes_above_threshold_and_skips_background() {
        let proposals = [[10.0, 10.0, 50.0, 50.0]];
        // 3 classes: background, a, b; class a dominates
        let logits = [0.0, 3.0, 2.0];
        let deltas = [0.0; 12];
        let d = postprocess(
            &proposals,
            &logits,
            &deltas,
            3,
            (100, 100),
            &cfg(),
            &mut DetectionScratch::default(),
        );
        assert_eq!(d.labels, vec![1, 2]);
        assert_eq!(d.boxes[0], proposals[0]);
        assert!(d.scores[0] > 0.7 && d.scores[1] > 0.25);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut out = [0.0; 3];
        softmax(&[1.0, 2.0, 3.0], &mut out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(out[2] > out[1] && out[1] > out[0]);
    }
}
