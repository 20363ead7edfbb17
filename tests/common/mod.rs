//! Helpers shared by the integration tests: fixture paths and .npy reading.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::ArrayD;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn engine_dir() -> PathBuf {
    root().join("engines/shapes")
}

pub fn npy_f32(path: &Path) -> ArrayD<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn npy_i64(path: &Path) -> ArrayD<i64> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn iou(a: &[f32], b: &[f32]) -> f32 {
    maskstream::boxes::iou(&[a[0], a[1], a[2], a[3]], &[b[0], b[1], b[2], b[3]])
}

/// IoU of two row-major 0/1 bitmaps of equal size.
pub fn mask_iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        inter += (x & y) as u64;
        union += (x | y) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// The bundled model on the CPU backend with two threads, as CI runs it.
pub fn cpu_model() -> maskstream::MaskRcnn {
    let opts = maskstream::BackendOptions {
        kind: maskstream::BackendKind::Cpu,
        threads: 2,
        ..Default::default()
    };
    maskstream::MaskRcnn::load(engine_dir(), &opts).expect("load bundled engine")
}
