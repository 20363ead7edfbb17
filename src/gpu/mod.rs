//! CUDA kernels (multi-level ROIAlign f32/f16, preprocess, NV12 conversion, paste + composite)
//! compiled once at run time with NVRTC, loaded through cudarc with dynamic loading — the same binary
//! runs with and without NVIDIA drivers. Nothing here creates a CUDA context unless a driver and a
//! device are present (creating one without a driver can panic inside cudarc).
//!
//! NOT WIRED: nothing in the model or the pipeline calls these kernels yet; `tests/gpu.rs` tests them
//! alone. They are meant to become a second [`crate::model::device::Device`] (ROIAlign and paste on
//! the GPU, with features kept there); until then every backend runs ROIAlign and paste on the CPU.
//! `paste_composite` has torchvision's paste geometry only; wiring it needs the exact one too
//! (`[mask] paste = "exact"`, the bundled engine's: `model::paste`).

pub mod kernels;

use std::path::PathBuf;

/// The CUDA C++ source of every kernel.
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// True when libnvrtc can be loaded (kernels can be compiled; no GPU needed for that).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Number of usable CUDA devices: 0 without a driver or a device (never panics).
pub fn device_count() -> usize {
    if !crate::backend::cuda_driver_present() {
        return 0;
    }
    match std::panic::catch_unwind(cudarc::driver::CudaContext::device_count) {
        Ok(Ok(n)) if n > 0 => n as usize,
        _ => 0,
    }
}

/// Where compiled PTX is cached: $XDG_CACHE_HOME/maskstream/ptx or ~/.cache/maskstream/ptx.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("maskstream/ptx")
}
