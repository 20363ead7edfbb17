//! The device seam: the two data-dependent kernels between the graphs, multi-level ROIAlign and mask
//! paste, behind one trait. The model only calls them through [`Device`]; [`Cpu`] is the one
//! implementation today. The CUDA kernels in `crate::gpu` (ROIAlign f32/f16, paste) are meant to plug
//! in here as a second implementation; they are not wired yet (see that module).

use crate::engine::MaskSection;
use crate::error::Result;

use super::boxes::BoxF;
use super::paste::{self, InstanceMask, PasteScratch};
use super::roi_align::{FeatureMap, Roi, RoiAlignParams, RoiAligner};

/// Where ROIAlign and paste run.
pub trait Device: Send + std::fmt::Debug {
    /// Makes the feature levels of this batch available to [`Device::roi_align`] (once per batch:
    /// the box and the mask pooler share it when they pool the same levels).
    fn load_features(&mut self, levels: &[FeatureMap<'_>]) -> Result<()>;

    /// Multi-level ROIAlign of `rois` from the levels last loaded: `out` is [R, C, S, S].
    fn roi_align(
        &mut self,
        levels: &[FeatureMap<'_>],
        rois: &[Roi],
        params: &RoiAlignParams,
        out: &mut [f32],
    ) -> Result<()>;

    /// Pastes one [R, R] probability mask per box (frame pixels) into a frame of `frame` (h, w).
    fn paste(
        &mut self,
        probs: &[f32],
        resolution: usize,
        boxes: &[BoxF],
        frame: (usize, usize),
        mask: &MaskSection,
    ) -> Vec<InstanceMask>;
}

/// The CPU kernels: [`RoiAligner`] (rayon, channels-last) and [`paste::paste`].
#[derive(Default)]
pub struct Cpu {
    aligner: RoiAligner,
    paste: PasteScratch,
}

impl std::fmt::Debug for Cpu {
    // the buffers are large and say nothing
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cpu")
    }
}

impl Device for Cpu {
    fn load_features(&mut self, levels: &[FeatureMap<'_>]) -> Result<()> {
        self.aligner.prepare(levels)
    }

    fn roi_align(
        &mut self,
        levels: &[FeatureMap<'_>],
        rois: &[Roi],
        params: &RoiAlignParams,
        out: &mut [f32],
    ) -> Result<()> {
        self.aligner.pool(levels, rois, params, out)
    }

    fn paste(
        &mut self,
        probs: &[f32],
        resolution: usize,
        boxes: &[BoxF],
        frame: (usize, usize),
        mask: &MaskSection,
    ) -> Vec<InstanceMask> {
        let plane = resolution * resolution;
        boxes
            .iter()
            .zip(probs.chunks_exact(plane.max(1)))
            .map(|(b, p)| paste::paste(p, resolution, b, frame, mask, &mut self.paste))
            .collect()
    }
}
