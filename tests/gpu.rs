//! The CUDA kernels. Compiling them needs only NVRTC (present where the CUDA toolkit or the PyPI
//! nvidia-cuda-nvrtc wheel is, e.g. engines/tools/.venv); running them needs an NVIDIA GPU. Each test says
//! why it skips when what it needs is absent (CI has neither).

mod common;

use common::roi_align::{max_abs_diff, Fixtures};
use maskstream::gpu;

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
    let set = Fixtures::load();
    let maps = set.maps();
    let mut worst = (0.0f32, 0.0f32);
    for case in &set.cases {
        let c = set.case(case);
        let f32_out = k.roi_align_host(&maps, &c.rois, &c.params, false).unwrap();
        let f16_out = k.roi_align_host(&maps, &c.rois, &c.params, true).unwrap();
        let d32 = max_abs_diff(&c.expected, &f32_out);
        let d16 = max_abs_diff(&c.expected, &f16_out);
        assert!(d32 <= 1e-5, "{}: f32 max |delta| {d32}", c.name);
        assert!(d16 <= 2e-2, "{}: f16 max |delta| {d16}", c.name);
        worst = (worst.0.max(d32), worst.1.max(d16));
    }
    println!(
        "CUDA roi_align: worst max |delta| f32 {:e}, f16 {:e}",
        worst.0, worst.1
    );
}
