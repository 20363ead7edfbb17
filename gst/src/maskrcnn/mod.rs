//! `maskrcnn`: Mask R-CNN instance segmentation of each frame; the video passes unchanged, each
//! instance rides along as a region-of-interest meta ([`crate::meta`]).

use gst::glib;
use gst::prelude::*;

mod imp;

/// Which execution provider runs the graphs (`backend` property).
#[derive(Debug, Default, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMaskRcnnBackend")]
pub enum Backend {
    #[default]
    #[enum_value(
        name = "Auto: CUDA when a usable GPU is present, else CPU",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 1,
    #[enum_value(name = "CUDA", nick = "cuda")]
    Cuda = 2,
    #[enum_value(name = "TensorRT (FP16, CUDA fallback)", nick = "tensorrt")]
    TensorRt = 3,
}

impl From<Backend> for maskstream::BackendKind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Auto => maskstream::BackendKind::Auto,
            Backend::Cpu => maskstream::BackendKind::Cpu,
            Backend::Cuda => maskstream::BackendKind::Cuda,
            Backend::TensorRt => maskstream::BackendKind::TensorRt,
        }
    }
}

/// FP32 or INT8 graphs (`precision` property).
#[derive(Debug, Default, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMaskRcnnPrecision")]
pub enum Precision {
    #[default]
    #[enum_value(
        name = "Auto: the engine's CPU default (INT8 where it has one) on CPU, FP32 on GPUs",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "FP32: the exported graphs, exact to torchvision",
        nick = "fp32"
    )]
    Fp32 = 1,
    #[enum_value(name = "INT8: the statically quantized graphs", nick = "int8")]
    Int8 = 2,
}

impl From<Precision> for maskstream::Precision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Auto => maskstream::Precision::Auto,
            Precision::Fp32 => maskstream::Precision::Fp32,
            Precision::Int8 => maskstream::Precision::Int8,
        }
    }
}

glib::wrapper! {
    pub struct MaskRcnn(ObjectSubclass<imp::MaskRcnn>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "maskrcnn",
        gst::Rank::NONE,
        MaskRcnn::static_type(),
    )
}
