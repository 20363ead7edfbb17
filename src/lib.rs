//! maskstream: real-time Mask R-CNN instance segmentation on video streams.
//!
//! Data flow (see shared/DESIGN.md): sources → [`preprocess`] → backbone (ONNX) → [`anchors`] + [`rpn`]
//! → [`roi_align`] → box head (ONNX) + [`box_head`] → [`roi_align`] → mask head (ONNX) + [`mask_head`]
//! → [`paste`] → [`overlay`] → sinks, with [`output`] as the JSON Lines schema.

pub mod analytics;
pub mod anchors;
pub mod backend;
pub mod box_head;
pub mod boxes;
pub mod engine;
pub mod error;
pub mod eval;
pub mod frame;
pub mod gpu;
pub mod mask_head;
pub mod model;
pub mod output;
pub mod overlay;
pub mod paste;
pub mod pipeline;
pub mod preprocess;
pub mod rle;
pub mod roi_align;
pub mod rpn;

pub use backend::{BackendKind, BackendOptions};
pub use engine::Engine;
pub use error::{Error, Result};
pub use frame::RgbFrame;
pub use model::{Detection, Detections, MaskRcnn, StageTimes};
