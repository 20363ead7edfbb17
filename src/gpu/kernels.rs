//! NVRTC compilation (cached by source hash) and host wrappers of the kernels in kernels.cu.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use crate::engine::FeatureLayout;
use crate::error::{Error, Result};
use crate::model::roi_align::{LevelData, Roi, RoiAlignParams};

/// Virtual architecture of the PTX: every GPU NVRTC 13 supports JIT-compiles it.
pub const ARCH: &str = "compute_75";

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Runtime(format!("CUDA {what}: {e:?}"))
}

/// Compiles kernels.cu to PTX (or reads it from the cache). Needs only libnvrtc, not a GPU.
pub fn compile() -> Result<String> {
    let key = hex::encode(Sha256::digest(format!("{ARCH}\n{}", super::KERNELS_CU)));
    let path = super::cache_dir().join(format!("{}.ptx", &key[..16]));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    if !super::nvrtc_available() {
        return Err(Error::Runtime(
            "NVRTC (libnvrtc) not found: cannot compile the CUDA kernels".into(),
        ));
    }
    let opts = CompileOptions {
        fmad: Some(false),
        arch: Some(ARCH),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(super::KERNELS_CU, opts)
        .map_err(|e| err("NVRTC", e))?;
    let text = ptx.to_src();
    if let Some(dir) = path.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            // the cache is an optimisation: a read-only home is not an error
            let _ = std::fs::write(&path, &text);
        }
    }
    Ok(text)
}

/// The loaded kernels on one device, with the stream they run on.
pub struct CudaKernels {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    roi_align_f32: CudaFunction,
    roi_align_f16: CudaFunction,
    pub preprocess_f32: CudaFunction,
    pub paste_composite: CudaFunction,
}

impl CudaKernels {
    /// Opens `device` and loads the kernels; an error (never a panic) without a usable GPU.
    pub fn new(device: usize) -> Result<Self> {
        if super::device_count() <= device {
            return Err(Error::Runtime(format!("no CUDA device {device}")));
        }
        let ptx = compile()?;
        let ctx = CudaContext::new(device).map_err(|e| err("context", e))?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| err("module", e))?;
        let f = |name: &str| module.load_function(name).map_err(|e| err(name, e));
        Ok(CudaKernels {
            stream: ctx.default_stream(),
            roi_align_f32: f("roi_align_f32")?,
            roi_align_f16: f("roi_align_f16")?,
            preprocess_f32: f("preprocess_rgb_f32")?,
            paste_composite: f("paste_composite")?,
            ctx,
        })
    }

    /// Multi-level ROIAlign of host features on the GPU (upload, one launch, download): the same
    /// contract as [`crate::model::roi_align::roi_align`]. `half` runs the f16 kernel on f16-rounded features.
    pub fn roi_align_host(
        &self,
        levels: &[crate::model::roi_align::FeatureMap<'_>],
        rois: &[Roi],
        p: &RoiAlignParams,
        half: bool,
    ) -> Result<Vec<f32>> {
        if levels.is_empty() || levels.len() > 5 {
            return Err(Error::Input(format!(
                "CUDA roi_align takes 1-5 levels, got {}",
                levels.len()
            )));
        }
        if levels.iter().any(|l| l.layout != FeatureLayout::Nchw) {
            return Err(Error::Input(
                "CUDA roi_align reads channels-first levels".into(),
            ));
        }
        let floats: Vec<&[f32]> = levels
            .iter()
            .map(|l| match l.data {
                LevelData::F32(d) => Ok(d),
                LevelData::U8 { .. } => Err(Error::Input(
                    "CUDA roi_align reads float levels (uint8 levels are the CPU's INT8 graphs')"
                        .into(),
                )),
            })
            .collect::<Result<_>>()?;
        let channels = levels[0].channels;
        let s = &self.stream;
        let mut dims = Vec::with_capacity(10);
        let mut scales = Vec::with_capacity(5);
        for l in levels {
            dims.extend([l.height as i32, l.width as i32]);
            scales.push(l.spatial_scale);
        }
        let boxes: Vec<f32> = rois.iter().flat_map(|r| r.bbox).collect();
        let meta: Vec<i32> = rois
            .iter()
            .flat_map(|r| [r.batch as i32, r.level as i32])
            .collect();
        let n = rois.len() * channels * p.output_size * p.output_size;
        if n == 0 {
            return Ok(Vec::new());
        }
        let d_dims = s.clone_htod(&dims).map_err(|e| err("copy", e))?;
        let d_scales = s.clone_htod(&scales).map_err(|e| err("copy", e))?;
        let d_boxes = s.clone_htod(&boxes).map_err(|e| err("copy", e))?;
        let d_meta = s.clone_htod(&meta).map_err(|e| err("copy", e))?;
        let (nr, ch, po, sr, al) = (
            rois.len() as i32,
            channels as i32,
            p.output_size as i32,
            p.sampling_ratio,
            p.aligned as i32,
        );
        let cfg = LaunchConfig::for_num_elems(n as u32);
        let scalars = [nr, ch, po, sr, al];
        let consts = [&d_dims, &d_meta];
        if half {
            let feats: Vec<Vec<u16>> = floats
                .iter()
                .map(|d| d.iter().map(|&x| f32_to_f16(x)).collect())
                .collect();
            let out = self.launch_roi_align(
                &self.roi_align_f16,
                &feats,
                consts,
                [&d_scales, &d_boxes],
                scalars,
                n,
                cfg,
            )?;
            return Ok(out.into_iter().map(f16_to_f32).collect());
        }
        self.launch_roi_align(
            &self.roi_align_f32,
            &floats,
            consts,
            [&d_scales, &d_boxes],
            scalars,
            n,
            cfg,
        )
    }

    /// Uploads the feature levels (f32 or f16 bits), launches one ROIAlign kernel with the argument
    /// order of kernels.cu (5 level pointers, dims, scales, boxes, meta, 5 scalars, output), downloads.
    #[allow(clippy::too_many_arguments)]
    fn launch_roi_align<T, F>(
        &self,
        func: &CudaFunction,
        levels: &[F],
        [d_dims, d_meta]: [&CudaSlice<i32>; 2],
        [d_scales, d_boxes]: [&CudaSlice<f32>; 2],
        scalars: [i32; 5],
        n: usize,
        cfg: LaunchConfig,
    ) -> Result<Vec<T>>
    where
        T: DeviceRepr + ValidAsZeroBits + Default + Clone,
        F: AsRef<[T]>,
    {
        let s = &self.stream;
        let feats: Vec<CudaSlice<T>> = levels
            .iter()
            .map(|l| s.clone_htod(l.as_ref()).map_err(|e| err("copy", e)))
            .collect::<Result<_>>()?;
        let mut out = s.alloc_zeros::<T>(n).map_err(|e| err("alloc", e))?;
        let mut b = s.launch_builder(func);
        for i in 0..5 {
            // unused level slots repeat the last level; the kernel never reads them
            b.arg(&feats[i.min(feats.len() - 1)]);
        }
        b.arg(d_dims).arg(d_scales).arg(d_boxes).arg(d_meta);
        for v in &scalars {
            b.arg(v);
        }
        b.arg(&mut out);
        // SAFETY: argument order and types match roi_align_f32 / roi_align_f16 in kernels.cu (T is
        // f32 or the f16 bits as u16); the caller checked the sizes.
        unsafe { b.launch(cfg) }.map_err(|e| err("launch", e))?;
        s.clone_dtoh(&out).map_err(|e| err("copy", e))
    }
}

/// IEEE binary16 from f32, round to nearest even (what cvt.rn.f16.f32 does).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut r = m >> shift;
        let rem = m & ((1 << shift) - 1);
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_round_trips_and_rounds_to_even() {
        for v in [
            0.0f32,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.33325195,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(v)), v, "{v}");
        }
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // tie -> even
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f32_to_f16(1e9), 0x7c00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }
}
