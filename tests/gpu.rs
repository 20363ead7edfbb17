//! The CUDA kernels. Compiling them needs only NVRTC (present where the CUDA toolkit or the PyPI
//! nvidia-cuda-nvrtc wheel is, e.g. engines/tools/.venv); running them needs an NVIDIA GPU. Each test says
//! why it skips when what it needs is absent (CI has neither).

mod common;

use maskstream::gpu;
use maskstream::model::roi_align::{self, FeatureMap, Roi, RoiAlignParams};

#[test]
fn kernels_compile_with_nvrtc() {
    if !gpu::nvrtc_available() {
        println!(
            "skipped: libnvrtc not found (set LD_LIBRARY_PATH to a CUDA 13 lib folder to run this)"
        );
        return;
    }
    let ptx = gpu::kernels::compile().expect("NVRTC compiles kernels.cu");
    for f in [
        "roi_align_f32",
        "roi_align_f16",
        "preprocess_rgb_f32",
        "preprocess_rgb_f16",
        "nv12_to_rgb",
        "paste_composite",
    ] {
        assert!(ptx.contains(&format!(".entry {f}")), "PTX lacks {f}");
    }
    println!(
        "NVRTC: {} bytes of PTX for {}",
        ptx.len(),
        gpu::kernels::ARCH
    );
}

#[test]
fn cuda_roi_align_matches_torchvision_fixtures() {
    if gpu::device_count() == 0 {
        println!("skipped: no CUDA device");
        return;
    }
    let k = gpu::kernels::CudaKernels::new(0).unwrap();
    let d = common::fixtures().join("roi_align");
    let cases = common::json(&d.join("cases.json"));
    let img_h = cases["image_size"][0].as_u64().unwrap() as usize;
    let feats: Vec<_> = (0..4)
        .map(|i| common::npy_f32(&d.join(format!("feature_{i}.npy"))))
        .collect();
    let maps: Vec<FeatureMap<'_>> = feats
        .iter()
        .map(|f| {
            let s = f.shape();
            FeatureMap {
                data: f.as_slice().unwrap(),
                batch: s[0],
                channels: s[1],
                height: s[2],
                width: s[3],
                spatial_scale: roi_align::infer_scale(s[2], img_h),
            }
        })
        .collect();
    let rois_a = common::npy_f32(&d.join("rois.npy"));
    let levels = common::npy_i64(&d.join("levels.npy"));
    let r = rois_a.as_slice().unwrap();
    let mut worst = (0.0f32, 0.0f32);
    for case in cases["cases"].as_array().unwrap() {
        let p = RoiAlignParams {
            output_size: case["output_size"].as_u64().unwrap() as usize,
            sampling_ratio: case["sampling_ratio"].as_i64().unwrap() as i32,
            aligned: case["aligned"].as_bool().unwrap(),
        };
        let fixed = case["level"].as_u64();
        let rois: Vec<Roi> = (0..rois_a.shape()[0])
            .map(|i| Roi {
                batch: r[i * 5] as usize,
                level: fixed.map_or(levels.as_slice().unwrap()[i] as usize, |l| l as usize),
                bbox: [r[i * 5 + 1], r[i * 5 + 2], r[i * 5 + 3], r[i * 5 + 4]],
            })
            .collect();
        let expected = common::npy_f32(&d.join(format!("{}.npy", case["name"].as_str().unwrap())));
        let diff = |v: &[f32]| {
            expected
                .as_slice()
                .unwrap()
                .iter()
                .zip(v)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        let f32_out = k.roi_align_host(&maps, &rois, &p, false).unwrap();
        let f16_out = k.roi_align_host(&maps, &rois, &p, true).unwrap();
        let (d32, d16) = (diff(&f32_out), diff(&f16_out));
        assert!(d32 <= 1e-5, "{}: f32 max |delta| {d32}", case["name"]);
        assert!(d16 <= 2e-2, "{}: f16 max |delta| {d16}", case["name"]);
        worst = (worst.0.max(d32), worst.1.max(d16));
    }
    println!(
        "CUDA roi_align: worst max |delta| f32 {:e}, f16 {:e}",
        worst.0, worst.1
    );
}
