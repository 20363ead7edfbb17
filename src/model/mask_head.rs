//! Mask head: 4 x conv3x3 + deconv + 1x1 are the `mask_head.onnx` graph; its post-processing
//! (torchvision maskrcnn_inference) is here: from the logits [D, K, R, R], keep the channel of each
//! detection's predicted class and apply the sigmoid.

use crate::backend::{BackendOptions, Provider};
use crate::engine::{Engine, Manifest};
use crate::error::Result;

use super::box_head::Detections;
use super::graph::{self, Head};
use super::roi_align::Pooled;
use super::rpn::sigmoid;

/// Mask probabilities of every detection of the batch, image by image: [ΣD, R, R].
#[derive(Debug, Clone, Copy)]
pub struct MaskProbs<'a> {
    pub data: &'a [f32],
    pub resolution: usize,
}

/// The mask head graph and its output buffer.
#[derive(Debug)]
pub struct MaskHead {
    head: Head,
    probs: Vec<f32>,
}

impl MaskHead {
    pub fn load(engine: &Engine, opts: &BackendOptions) -> Result<(Self, Provider)> {
        let g = &engine.manifest.graphs.mask_head;
        let outputs = [g.mask_logits.as_str()];
        let (head, provider) = Head::open(
            engine,
            (&g.file, &g.input, g.input_layout),
            &outputs,
            "mask_head",
            opts,
        )?;
        Ok((
            MaskHead {
                head,
                probs: Vec::new(),
            },
            provider,
        ))
    }

    /// Runs the graph at the most ROIs a frame brings (every detection it may keep).
    pub fn warm(&mut self, m: &Manifest, buffer: &mut Vec<f32>) -> Result<()> {
        let (c, s) = (m.model.fpn_channels, m.mask_roi_pool.output_size);
        self.head
            .warm((m.roi_heads.detections_per_img, c, s), buffer)
    }

    /// Pooled detections [ΣD, C, 14, 14] → logits [ΣD, K, 28, 28] → probabilities of each
    /// detection's own class [ΣD, 28, 28].
    pub fn forward(
        &mut self,
        pooled: &Pooled<'_>,
        detections: &[Detections],
        m: &Manifest,
    ) -> Result<MaskProbs<'_>> {
        let resolution = m.mask.resolution;
        self.probs.clear();
        if pooled.rois() > 0 {
            let g = &m.graphs.mask_head;
            let outputs = self.head.forward(pooled)?;
            let (k, r) = (m.num_classes(), resolution as i64);
            let expect = [pooled.rois() as i64, k as i64, r, r];
            let (_, logits) = graph::output(&outputs, &g.file, &g.mask_logits, &expect)?;
            let labels: Vec<usize> = detections
                .iter()
                .flat_map(|d| d.labels.iter().copied())
                .collect();
            class_probabilities(logits, &labels, k, resolution, &mut self.probs);
        }
        Ok(MaskProbs {
            data: &self.probs,
            resolution,
        })
    }
}

/// Writes [D, R, R] probabilities into `out`.
pub fn class_probabilities(
    logits: &[f32],
    labels: &[usize],
    num_classes: usize,
    resolution: usize,
    out: &mut Vec<f32>,
) {
    let plane = resolution * resolution;
    out.clear();
    for (d, &label) in labels.iter().enumerate() {
        let start = (d * num_classes + label) * plane;
        out.extend(logits[start..start + plane].iter().map(|&v| sigmoid(v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_label_channel() {
        // 2 detections, 3 classes, 1x1 masks
        let logits = [0.0, 10.0, -10.0, 0.0, -10.0, 10.0];
        let mut out = Vec::new();
        class_probabilities(&logits, &[1, 2], 3, 1, &mut out);
        assert!(out[0] > 0.99 && out[1] > 0.99);
        class_probabilities(&logits, &[2, 1], 3, 1, &mut out);
        assert!(out[0] < 0.01 && out[1] < 0.01);
    }
}
