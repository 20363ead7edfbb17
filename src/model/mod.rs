//! Mask R-CNN, stage by stage as in the paper, one file per stage:
//!
//! ```text
//! frames ─ preprocess ─▶ Preprocessed [N,3,H,W]
//!        ─ backbone (ONNX: ResNet+FPN+RPN head) ─▶ Features: per level [N,C,h,w], RPN [N,A,h,w] [N,4A,h,w]
//!        ─ anchors + rpn ─▶ Proposals: N × [P,4]
//!        ─ roi_align 7×7 (device) ─▶ Pooled [ΣP,C,7,7]
//!        ─ box_head (ONNX fc6/fc7/predictor + post-processing) ─▶ Detections: N × [D,4] scores labels
//!        ─ roi_align 14×14 (device) ─▶ Pooled [ΣD,C,14,14]
//!        ─ mask_head (ONNX convs/deconv + class channel, sigmoid) ─▶ MaskProbs [ΣD,28,28]
//!        ─ paste (device) ─▶ Instances: N × detections in frame pixels with binary masks
//!        ─ cross_class (manifest opt-in) ─▶ a second report of one object under another class scored down
//! ```
//!
//! The dense work is in the three ONNX graphs ([`graph`], run by [`crate::backend`]); everything
//! data-dependent is ours. ROIAlign and paste run behind the [`device::Device`] seam.

pub mod anchors;
pub mod backbone;
pub mod box_head;
pub mod boxes;
pub mod cross_class;
pub mod device;
pub mod graph;
pub mod mask_head;
pub mod mask_iou;
pub mod paste;
pub mod preprocess;
pub mod roi_align;
pub mod rpn;
pub mod stages;

pub use paste::{Detection, Instances};
pub use stages::{Stage, StageTimes};

use crate::backend::{BackendOptions, Provider};
use crate::engine::{Engine, Manifest};
use crate::error::{Error, Result};
use crate::frame::RgbFrame;

use anchors::AnchorGenerator;
use backbone::{Backbone, Features};
use box_head::BoxHead;
use boxes::BoxF;
use device::{Cpu, Device};
use mask_head::MaskHead;
use preprocess::Preprocessor;
use roi_align::MultiScaleRoiAlign;
use rpn::{Proposals, RegionProposals};

/// Result for one frame, with the intermediates that parity tests and debugging look at.
#[derive(Debug, Clone, Default)]
pub struct FrameResult {
    pub detections: Instances,
    /// RPN proposals in resized-image pixels, best first.
    pub proposals: Proposals,
    /// (height, width) after resize and after padding.
    pub resized: (usize, usize),
    pub padded: (usize, usize),
    /// Times of the whole batch this frame was part of.
    pub times: StageTimes,
}

/// A loaded engine: three ONNX Runtime sessions and the stages between them.
pub struct MaskRcnn {
    engine: Engine,
    provider: Provider,
    preprocessor: Preprocessor,
    backbone: Backbone,
    rpn: RegionProposals,
    box_head: BoxHead,
    mask_head: MaskHead,
    device: Box<dyn Device>,
    /// ROIAlign's output, reused by both poolers and across calls.
    pooled: Vec<f32>,
    /// Detections scoring under this get no mask and are not returned (see [`MaskRcnn::set_min_score`]).
    min_score: f32,
}

impl std::fmt::Debug for MaskRcnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskRcnn")
            .field("engine", &self.engine.dir)
            .field("provider", &self.provider)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl MaskRcnn {
    /// Loads and verifies the engine in `dir` and opens its graphs with the requested backend.
    pub fn load(dir: impl AsRef<std::path::Path>, opts: &BackendOptions) -> Result<Self> {
        let mut engine = Engine::load(dir)?;
        engine.select(engine.resolve(opts.precision, opts.runs_on_cpu())?)?;
        let mut opts = opts.clone();
        if opts.cache_dir.is_none() {
            opts.cache_dir = Some(engine.dir.join("cache"));
        }
        let (backbone, provider) = Backbone::load(&engine, &opts)?;
        let (box_head, _) = BoxHead::load(&engine, &opts)?;
        let (mask_head, _) = MaskHead::load(&engine, &opts)?;
        tracing::info!(engine = %engine.dir.display(), %provider, precision = %engine.precision, "engine loaded");
        let mut model = MaskRcnn {
            rpn: RegionProposals::new(AnchorGenerator::new(&engine.manifest.anchors)),
            engine,
            provider,
            preprocessor: Preprocessor::default(),
            backbone,
            box_head,
            mask_head,
            device: Box::new(Cpu::default()),
            pooled: Vec::new(),
            min_score: 0.0,
        };
        model.warm_heads()?;
        Ok(model)
    }

    /// Runs both heads once at their largest inputs (every proposal of a frame; the most detections
    /// a frame may keep), so that ONNX Runtime's memory arena reaches its high-water mark at load
    /// instead of growing in steps whenever a frame brings more detections than any before.
    fn warm_heads(&mut self) -> Result<()> {
        let m = &self.engine.manifest;
        self.box_head.warm(m, &mut self.pooled)?;
        self.mask_head.warm(m, &mut self.pooled)?;
        // `pooled` keeps its capacity: the first frames need that much again
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.engine.manifest
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn classes(&self) -> &[String] {
        self.engine.classes()
    }

    /// The precision of the graphs this model runs (FP32 or INT8).
    pub fn precision(&self) -> crate::engine::Precision {
        self.engine.precision
    }

    /// Drops detections scoring under `score` after the box head, before the mask head, whose work
    /// grows with every detection: a caller that keeps only detections at or above `score` (the
    /// output threshold, the tracker's low threshold) saves the masks of those it would throw away.
    /// The detections kept are exactly those of torchvision at `roi_heads.score_thresh` with a score
    /// of at least `score`. 0 (the default) returns every one.
    pub fn set_min_score(&mut self, score: f32) {
        self.min_score = score;
    }

    /// The execution provider that runs the graphs.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Detects instances in one frame.
    pub fn detect(&mut self, frame: &RgbFrame<'_>) -> Result<FrameResult> {
        let mut out = self.detect_batch(std::slice::from_ref(frame))?;
        out.pop()
            .ok_or_else(|| Error::Input("empty batch result".into()))
    }

    /// Detects instances in several frames with one pass through each graph (frames are padded to the
    /// largest, as torchvision batches them). Stage times are those of the whole batch.
    pub fn detect_batch(&mut self, frames: &[RgbFrame<'_>]) -> Result<Vec<FrameResult>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let Self {
            engine,
            preprocessor,
            backbone,
            rpn,
            box_head,
            mask_head,
            device,
            pooled,
            min_score,
            ..
        } = self;
        let m = &engine.manifest;
        let device = device.as_mut();
        let mut t = StageTimes::default();

        // frames → [N, 3, H, W]
        let images = t.time(Stage::Preprocess, || {
            preprocessor.batch(frames, &m.transform)
        });
        t.time(Stage::Preprocess, || backbone.prepare(&images));
        // → per level: features, objectness and deltas (layouts as the manifest says)
        let outputs = t.time(Stage::Backbone, || backbone.forward(&images))?;
        let features = t.time(Stage::Backbone, || {
            Features::read(&outputs, m, frames.len())
        })?;
        // → N × [P, 4] proposals
        let proposals = t.time(Stage::Proposals, || rpn.forward(&features, &images, &m.rpn));

        // → [ΣP, C, 7, 7] → N × [D, 4] detections with scores and labels
        let image = images.max_resized();
        let box_pool = MultiScaleRoiAlign::new(
            &m.box_roi_pool,
            m,
            &features,
            image,
            m.graphs.box_head.input_layout,
            None,
        )?;
        let boxes = boxes_of(proposals.iter().map(|p| &p.boxes));
        let pooled_boxes = t.time(Stage::RoiAlignBox, || box_pool.pool(device, &boxes, pooled))?;
        let mut detections = box_head.forward(&pooled_boxes, &proposals, &images, m, &mut t)?;
        if *min_score > 0.0 {
            detections
                .iter_mut()
                .for_each(|d| d.retain_min_score(*min_score));
        }

        // → [ΣD, C, 14, 14] → [ΣD, 28, 28] mask probabilities → N × instances in frame pixels
        let mask_pool = MultiScaleRoiAlign::new(
            &m.mask_roi_pool,
            m,
            &features,
            image,
            m.graphs.mask_head.input_layout,
            Some(&box_pool),
        )?;
        let boxes = boxes_of(detections.iter().map(|d| &d.boxes));
        let pooled_masks = t.time(Stage::RoiAlignMask, || {
            mask_pool.pool(device, &boxes, pooled)
        })?;
        let probs = t.time(Stage::MaskHead, || {
            mask_head.forward(&pooled_masks, &detections, m)
        })?;
        let mut instances = t.time(Stage::Paste, || {
            paste::instances(device, detections, &probs, &images, &m.mask)
        });
        // one object reported under two classes: the second report scored down (manifest opt-in)
        if let Some(c) = m.mask.cross_class {
            t.time(Stage::Paste, || {
                for frame in &mut instances {
                    cross_class::soften(frame, c);
                    frame.retain(|d| d.score >= *min_score);
                }
            });
        }

        Ok(instances
            .into_iter()
            .zip(proposals)
            .zip(&images.sizes)
            .map(|((detections, proposals), size)| FrameResult {
                detections,
                proposals,
                resized: size.resized,
                padded: images.padded,
                times: t,
            })
            .collect())
    }
}

/// Each image's boxes, as the poolers take them.
fn boxes_of<'a>(per_image: impl Iterator<Item = &'a Vec<BoxF>>) -> Vec<&'a [BoxF]> {
    per_image.map(Vec::as_slice).collect()
}
