//! Our ROIAlign against torchvision.ops.roi_align / MultiScaleRoIAlign on the committed fixtures:
//! every case (all levels, boxes inside / partly / fully outside, tiny and huge, aligned false/true,
//! sampling ratio 0, 2 and 3) within 1e-5.

mod common;

use maskstream::model::roi_align::{self, FeatureMap, Roi, RoiAlignParams};

struct Set {
    features: Vec<ndarray::ArrayD<f32>>,
    rois: ndarray::ArrayD<f32>,
    levels: ndarray::ArrayD<i64>,
    cases: serde_json::Value,
    image: (usize, usize),
}

fn load() -> Set {
    let d = common::fixtures().join("roi_align");
    let cases = common::json(&d.join("cases.json"));
    let image = (
        cases["image_size"][0].as_u64().unwrap() as usize,
        cases["image_size"][1].as_u64().unwrap() as usize,
    );
    Set {
        features: (0..4)
            .map(|i| common::npy_f32(&d.join(format!("feature_{i}.npy"))))
            .collect(),
        rois: common::npy_f32(&d.join("rois.npy")),
        levels: common::npy_i64(&d.join("levels.npy")),
        cases,
        image,
    }
}

fn maps<'a>(set: &'a Set) -> Vec<FeatureMap<'a>> {
    set.features
        .iter()
        .map(|f| {
            let s = f.shape();
            FeatureMap {
                data: f.as_slice().unwrap(),
                batch: s[0],
                channels: s[1],
                height: s[2],
                width: s[3],
                spatial_scale: roi_align::infer_scale(s[2], set.image.0),
            }
        })
        .collect()
}

#[test]
fn level_assignment_matches_torchvision() {
    let set = load();
    let n = set.rois.shape()[0];
    for i in 0..n {
        let r = set.rois.as_slice().unwrap();
        let b = [r[i * 5 + 1], r[i * 5 + 2], r[i * 5 + 3], r[i * 5 + 4]];
        let lvl = roi_align::map_level(&b, 2, 5, 224.0, 4.0);
        assert_eq!(
            lvl as i64,
            set.levels.as_slice().unwrap()[i],
            "roi {i} {b:?}"
        );
    }
}

#[test]
fn every_case_within_1e5() {
    let set = load();
    let maps = maps(&set);
    let r = set.rois.as_slice().unwrap();
    let n = set.rois.shape()[0];
    let levels = set.levels.as_slice().unwrap();
    let mut worst = 0.0f32;
    let cases = set.cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let params = RoiAlignParams {
            output_size: case["output_size"].as_u64().unwrap() as usize,
            sampling_ratio: case["sampling_ratio"].as_i64().unwrap() as i32,
            aligned: case["aligned"].as_bool().unwrap(),
        };
        let fixed_level = case["level"].as_u64().map(|l| l as usize);
        let rois: Vec<Roi> = (0..n)
            .map(|i| Roi {
                batch: r[i * 5] as usize,
                level: fixed_level.unwrap_or(levels[i] as usize),
                bbox: [r[i * 5 + 1], r[i * 5 + 2], r[i * 5 + 3], r[i * 5 + 4]],
            })
            .collect();
        let expected = common::npy_f32(
            &common::fixtures()
                .join("roi_align")
                .join(format!("{name}.npy")),
        );
        let mut out = vec![0.0; expected.len()];
        roi_align::roi_align(&maps, &rois, &params, &mut out).unwrap();
        let diff = expected
            .as_slice()
            .unwrap()
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-5, "{name}: max |delta| {diff}");
        worst = worst.max(diff);
    }
    println!(
        "roi_align: {} cases, worst max |delta| {worst:e}",
        cases.len()
    );
}
