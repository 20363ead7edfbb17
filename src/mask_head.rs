//! Mask head post-processing (torchvision maskrcnn_inference): from the `mask_head.onnx` logits
//! [D, K, R, R], keep the channel of each detection's predicted class and apply the sigmoid.

use crate::rpn::sigmoid;

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
