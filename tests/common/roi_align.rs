//! The ROIAlign fixtures (tests/fixtures/roi_align, torchvision's outputs): four feature levels, ROIs
//! with torchvision's level assignment, and one expected output per case of cases.json.

use maskstream::engine::FeatureLayout;
use maskstream::model::roi_align::{self, FeatureMap, Roi, RoiAlignParams};

pub struct Fixtures {
    pub features: Vec<ndarray::ArrayD<f32>>,
    /// [R, 5]: batch index, x1, y1, x2, y2.
    pub rois: ndarray::ArrayD<f32>,
    /// torchvision's MultiScaleRoIAlign level of each ROI.
    pub levels: ndarray::ArrayD<i64>,
    pub cases: Vec<serde_json::Value>,
    /// (height, width) of the image the features came from.
    pub image: (usize, usize),
}

/// One case: its name, parameters, ROIs and torchvision's output.
pub struct Case {
    pub name: String,
    pub params: RoiAlignParams,
    pub rois: Vec<Roi>,
    pub expected: Vec<f32>,
}

fn dir() -> std::path::PathBuf {
    super::fixtures().join("roi_align")
}

impl Fixtures {
    pub fn load() -> Self {
        let d = dir();
        let cases = super::json(&d.join("cases.json"));
        let image = (
            cases["image_size"][0].as_u64().unwrap() as usize,
            cases["image_size"][1].as_u64().unwrap() as usize,
        );
        Fixtures {
            features: (0..4)
                .map(|i| super::npy_f32(&d.join(format!("feature_{i}.npy"))))
                .collect(),
            rois: super::npy_f32(&d.join("rois.npy")),
            levels: super::npy_i64(&d.join("levels.npy")),
            cases: cases["cases"].as_array().unwrap().clone(),
            image,
        }
    }

    /// The levels as ROIAlign reads them, scales inferred as torchvision does.
    pub fn maps(&self) -> Vec<FeatureMap<'_>> {
        self.features
            .iter()
            .map(|f| {
                let s = f.shape();
                FeatureMap {
                    data: f.as_slice().unwrap().into(),
                    layout: FeatureLayout::Nchw,
                    batch: s[0],
                    channels: s[1],
                    height: s[2],
                    width: s[3],
                    spatial_scale: roi_align::infer_scale(s[2], self.image.0),
                }
            })
            .collect()
    }

    /// Box of ROI `i` in image pixels.
    pub fn bbox(&self, i: usize) -> [f32; 4] {
        let r = &self.rois.as_slice().unwrap()[i * 5..i * 5 + 5];
        [r[1], r[2], r[3], r[4]]
    }

    pub fn case(&self, case: &serde_json::Value) -> Case {
        let name = case["name"].as_str().unwrap().to_string();
        let params = RoiAlignParams {
            output_size: case["output_size"].as_u64().unwrap() as usize,
            layout: FeatureLayout::Nchw,
            sampling_ratio: case["sampling_ratio"].as_i64().unwrap() as i32,
            aligned: case["aligned"].as_bool().unwrap(),
        };
        // a case either pools every ROI from one level or from torchvision's assignment
        let fixed = case["level"].as_u64().map(|l| l as usize);
        let (r, levels) = (
            self.rois.as_slice().unwrap(),
            self.levels.as_slice().unwrap(),
        );
        let rois = (0..self.rois.shape()[0])
            .map(|i| Roi {
                batch: r[i * 5] as usize,
                level: fixed.unwrap_or(levels[i] as usize),
                bbox: self.bbox(i),
            })
            .collect();
        let expected = super::npy_f32(&dir().join(format!("{name}.npy")))
            .into_raw_vec_and_offset()
            .0;
        Case {
            name,
            params,
            rois,
            expected,
        }
    }
}

/// Largest |a - b| over two outputs.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}
