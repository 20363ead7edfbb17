//! maskstream: real-time Mask R-CNN instance segmentation on video streams.
//!
//! Data flow (docs/architecture.md): [`pipeline`] sources (GStreamer) → [`model`] (preprocess →
//! backbone → anchors + RPN → ROIAlign → box head → ROIAlign → mask head → paste) → [`overlay`] →
//! [`pipeline`] sinks, with [`output`] as the JSON Lines schema; [`analytics`] (tracker, zones, lines,
//! events) runs between the model and the sinks; [`http`] serves metrics, health, the streams (added and
//! removed at run time) and a live page. [`engine`] reads the engine package,
//! [`backend`] opens its graphs with ONNX Runtime. [`gpu`] holds CUDA kernels that are not wired into
//! the model yet.

pub mod analytics;
pub mod backend;
mod coco;
pub mod engine;
pub mod error;
pub mod eval;
pub mod frame;
pub mod gpu;
pub mod http;
pub mod model;
pub mod output;
pub mod overlay;
pub mod pipeline;
pub mod rle;

pub use backend::{BackendKind, BackendOptions};
pub use engine::{Engine, Precision};
pub use error::{Error, Result};
pub use frame::RgbFrame;
pub use model::{Detection, FrameResult, MaskRcnn, Stage, StageTimes};
