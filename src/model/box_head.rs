//! Box head: the fc6/fc7 + predictor layers are the `box_head.onnx` graph; its post-processing
//! (torchvision RoIHeads.postprocess_detections) is here: softmax, per-class decode with the ROI coder
//! weights, clip, drop background / low scores / tiny boxes, NMS per class, top-k.

use crate::backend::{BackendOptions, Provider};
use crate::engine::{Engine, Manifest, RoiHeads};
use crate::error::Result;

use super::boxes::{self, BoxF, Candidates};
use super::graph::{self, Head};
use super::preprocess::Preprocessed;
use super::roi_align::Pooled;
use super::rpn::Proposals;
use super::stages::{Stage, StageTimes};

/// Detections of one image in resized-image pixels, best first.
#[derive(Debug, Clone, Default)]
pub struct Detections {
    pub boxes: Vec<BoxF>,
    pub scores: Vec<f32>,
    /// Class index into the manifest's classes (never 0, the background).
    pub labels: Vec<usize>,
}

impl Detections {
    /// Keeps the detections scoring at least `score`, in their order.
    pub fn retain_min_score(&mut self, score: f32) {
        let keep: Vec<bool> = self.scores.iter().map(|&s| s >= score).collect();
        let mut k = keep.iter();
        self.boxes.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.labels.retain(|_| *k.next().unwrap_or(&false));
        self.scores.retain(|&s| s >= score);
    }
}

#[derive(Debug, Default)]
pub struct DetectionScratch {
    probs: Vec<f32>,
    candidates: Candidates,
}

/// The box head graph and the buffers of its post-processing.
#[derive(Debug)]
pub struct BoxHead {
    head: Head,
    scratch: DetectionScratch,
}

impl BoxHead {
    pub fn load(engine: &Engine, opts: &BackendOptions) -> Result<(Self, Provider)> {
        let g = &engine.manifest.graphs.box_head;
        let outputs = [g.class_logits.as_str(), &g.box_deltas];
        let (head, provider) = Head::open(
            engine,
            (&g.file, &g.input, g.input_layout),
            &outputs,
            "box_head",
            opts,
        )?;
        let scratch = DetectionScratch::default();
        Ok((BoxHead { head, scratch }, provider))
    }

    /// Runs the graph at the most ROIs a frame brings (every proposal).
    pub fn warm(&mut self, m: &Manifest, buffer: &mut Vec<f32>) -> Result<()> {
        let (c, s) = (m.model.fpn_channels, m.box_roi_pool.output_size);
        self.head.warm((m.rpn.post_nms_top_n, c, s), buffer)
    }

    /// Pooled proposals [ΣP, C, 7, 7] → class logits [ΣP, K] and deltas [ΣP, 4K] (timed as
    /// [`Stage::BoxHead`]) → N detections (timed as [`Stage::Detections`]).
    pub fn forward(
        &mut self,
        pooled: &Pooled<'_>,
        proposals: &[Proposals],
        images: &Preprocessed<'_>,
        m: &Manifest,
        times: &mut StageTimes,
    ) -> Result<Vec<Detections>> {
        let n = images.sizes.len();
        if pooled.rois() == 0 {
            // nothing to classify: the graph is not run on an empty batch
            return Ok(vec![Detections::default(); n]);
        }
        let Self { head, scratch } = self;
        let g = &m.graphs.box_head;
        let outputs = times.time(Stage::BoxHead, || head.forward(pooled))?;
        times.time(Stage::Detections, || {
            let (r, k) = (pooled.rois() as i64, m.num_classes() as i64);
            let (_, logits) = graph::output(&outputs, &g.file, &g.class_logits, &[r, k])?;
            let (_, deltas) = graph::output(&outputs, &g.file, &g.box_deltas, &[r, 4 * k])?;
            let k = m.num_classes();
            let mut start = 0;
            Ok(proposals
                .iter()
                .zip(&images.sizes)
                .map(|(p, size)| {
                    let end = start + p.boxes.len();
                    let d = postprocess(
                        &p.boxes,
                        &logits[start * k..end * k],
                        &deltas[start * 4 * k..end * 4 * k],
                        k,
                        size.resized,
                        &m.roi_heads,
                        scratch,
                    );
                    start = end;
                    d
                })
                .collect())
        })
    }
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
) -> Detections {
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
    Detections {
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

    #[test]
    fn retain_min_score_keeps_rows_together() {
        let mut d = Detections {
            boxes: vec![[0.0; 4], [1.0; 4], [2.0; 4]],
            scores: vec![0.9, 0.2, 0.6],
            labels: vec![1, 2, 3],
        };
        d.retain_min_score(0.5);
        assert_eq!(d.boxes, vec![[0.0; 4], [2.0; 4]]);
        assert_eq!(d.scores, vec![0.9, 0.6]);
        assert_eq!(d.labels, vec![1, 3]);
    }

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
