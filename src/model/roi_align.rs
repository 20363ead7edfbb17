//! Multi-level ROIAlign. [`MultiScaleRoiAlign`] is torchvision's MultiScaleRoIAlign (scale inference,
//! log2 level assignment) for one pooler of the manifest, pooling on a [`Device`]. [`RoiAligner`] is
//! the CPU kernel behind the `Cpu` device: torchvision's `roi_align` arithmetic exactly (aligned
//! false/true, fixed or adaptive sampling ratio), parallel over ROIs.
//!
//! Per ROI, the bilinear taps (4 offsets + 4 weights per sample) are computed once and reused for every
//! channel, as torchvision's pre_calc does; features are read channels-last so the channel loop
//! vectorizes; per-thread scratch is reused, so the hot loop allocates nothing.

use rayon::prelude::*;

use crate::engine::{FeatureLayout, Manifest, Pooler};
use crate::error::{Error, Result};

use super::backbone::Features;
use super::boxes::BoxF;
use super::device::Device;

/// Pixels per block of the channels-last transpose in [`RoiAligner::prepare`].
const TRANSPOSE_TILE: usize = 32;

/// A level's values: floats, or the uint8 values an INT8 backbone computes them from, with the affine
/// map of ONNX's DequantizeLinear (value = (q - zero_point) as f32 * scale). ROIAlign dequantizes only
/// the values it samples, exactly as DequantizeLinear would, and reads a quarter of the memory.
#[derive(Debug, Clone, Copy)]
pub enum LevelData<'a> {
    F32(&'a [f32]),
    U8 {
        data: &'a [u8],
        scale: f32,
        zero_point: u8,
    },
}

impl LevelData<'_> {
    pub fn len(&self) -> usize {
        match self {
            LevelData::F32(d) => d.len(),
            LevelData::U8 { data, .. } => data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [f32]> for LevelData<'a> {
    fn from(d: &'a [f32]) -> Self {
        LevelData::F32(d)
    }
}

/// One feature level: a contiguous [batch, channels, height, width] tensor, or
/// [batch, height, width, channels] where `layout` says so (uint8 levels: channels-last only).
#[derive(Debug, Clone, Copy)]
pub struct FeatureMap<'a> {
    pub data: LevelData<'a>,
    pub layout: FeatureLayout,
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// feature size / image size, e.g. 1/4 for P2.
    pub spatial_scale: f32,
}

/// Pooling parameters (from the engine manifest's *_roi_pool sections).
#[derive(Debug, Clone, Copy)]
pub struct RoiAlignParams {
    pub output_size: usize,
    /// Layout of the output: [R, C, S, S] (torchvision's) or [R, S, S, C], the order the bins are
    /// computed in (a head graph that takes it spares the transpose).
    pub layout: FeatureLayout,
    /// > 0: fixed samples per bin and axis; 0: adaptive, ceil(roi / output_size).
    pub sampling_ratio: i32,
    pub aligned: bool,
}

/// A region of interest: which image of the batch, which level, and its box in image pixels.
#[derive(Debug, Clone, Copy)]
pub struct Roi {
    pub batch: usize,
    pub level: usize,
    pub bbox: BoxF,
}

/// torchvision's MultiScaleRoIAlign scale inference: 2^round(log2(feature / image)).
pub fn infer_scale(feature: usize, image: usize) -> f32 {
    let approx = feature as f32 / image as f32;
    2f32.powf(approx.log2().round_ties_even())
}

/// LevelMapper (FPN paper eq. 1): k = floor(k0 + log2(sqrt(area) / s0) + 1e-6), clamped to
/// [k_min, k_max]; returns k - k_min, an index into the pooled levels.
pub fn map_level(
    b: &BoxF,
    k_min: i32,
    k_max: i32,
    canonical_scale: f32,
    canonical_level: f32,
) -> usize {
    let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
    let k = (canonical_level + (s / canonical_scale).log2() + 1e-6f32).floor();
    let k = k.clamp(k_min as f32, k_max as f32);
    (k as i32 - k_min) as usize
}

/// ROIAlign's output: [rois, channels, output_size, output_size], or [rois, output_size, output_size,
/// channels] where the pooler's layout is channels-last.
#[derive(Debug, Clone, Copy)]
pub struct Pooled<'a> {
    pub data: &'a [f32],
    pub shape: [usize; 4],
}

impl Pooled<'_> {
    pub fn rois(&self) -> usize {
        self.shape[0]
    }
}

/// torchvision's MultiScaleRoIAlign for one pooler of the manifest (box 7x7 or mask 14x14): the
/// levels it reads with their inferred scales, the level mapper's range, the pooling parameters.
#[derive(Debug)]
pub struct MultiScaleRoiAlign<'a> {
    /// Indices of the pooled levels among the backbone's.
    levels: Vec<usize>,
    maps: Vec<FeatureMap<'a>>,
    k_min: i32,
    k_max: i32,
    canonical_scale: f32,
    canonical_level: f32,
    params: RoiAlignParams,
    /// False where an earlier pooler of this batch already loaded the same levels onto the device.
    load: bool,
}

impl<'a> MultiScaleRoiAlign<'a> {
    /// Scales are inferred from the largest resized image of the batch (`image`, (h, w)), as
    /// torchvision infers them from the padded batch's image sizes. `earlier`: a pooler of the same
    /// batch that pools first; when it reads the same levels, this one reuses what it loaded.
    pub fn new(
        pooler: &Pooler,
        m: &Manifest,
        features: &Features<'a>,
        image: (usize, usize),
        layout: FeatureLayout,
        earlier: Option<&MultiScaleRoiAlign<'a>>,
    ) -> Result<Self> {
        let graph = &m.graphs.backbone.file;
        let mut levels = Vec::with_capacity(pooler.levels.len());
        let mut maps = Vec::with_capacity(pooler.levels.len());
        let mut ks = Vec::with_capacity(pooler.levels.len());
        for name in &pooler.levels {
            let index = m
                .level_index(name)
                .filter(|&i| i < features.levels.len())
                .ok_or_else(|| Error::graph(graph, format!("no level {name}")))?;
            let level = &features.levels[index];
            levels.push(index);
            // from the longer side, where the padding to size_divisible cannot move the ratio off
            // the stride. torchvision infers the scales from the height, but once, at the module's
            // first call, and keeps them: after any usual first frame they are these; a frame
            // flatter than ~1:10 (1280x64) would give it 1/2 for p2 from the height
            let scale = if image.0 >= image.1 {
                infer_scale(level.height, image.0)
            } else {
                infer_scale(level.width, image.1)
            };
            ks.push(-scale.log2().round() as i32);
            maps.push(FeatureMap {
                data: level.features,
                layout: level.layout,
                batch: features.batch,
                channels: level.channels,
                height: level.height,
                width: level.width,
                spatial_scale: scale,
            });
        }
        // levels come from the graph's feature sizes: a level off its place would put boxes on
        // the wrong map (and k_min > k_max cannot clamp)
        if ks.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(Error::graph(
                graph,
                format!(
                    "pooled levels {:?} have scales 1/2^{ks:?}; they must be consecutive, finest first",
                    pooler.levels
                ),
            ));
        }
        Ok(MultiScaleRoiAlign {
            load: earlier.is_none_or(|e| e.levels != levels),
            levels,
            maps,
            k_min: ks.first().copied().unwrap_or(0),
            k_max: ks.last().copied().unwrap_or(0),
            canonical_scale: pooler.canonical_scale as f32,
            canonical_level: pooler.canonical_level as f32,
            params: RoiAlignParams {
                output_size: pooler.output_size,
                layout,
                sampling_ratio: pooler.sampling_ratio,
                aligned: pooler.aligned,
            },
        })
    }

    /// One ROI per box, image by image (`boxes[i]` are image i's, in resized-image pixels).
    pub fn rois(&self, boxes: &[&[BoxF]]) -> Vec<Roi> {
        let (k_min, k_max) = (self.k_min, self.k_max);
        let (scale, level) = (self.canonical_scale, self.canonical_level);
        boxes
            .iter()
            .enumerate()
            .flat_map(|(batch, bs)| {
                bs.iter().map(move |b| Roi {
                    batch,
                    level: map_level(b, k_min, k_max, scale, level),
                    bbox: *b,
                })
            })
            .collect()
    }

    /// Pools every box on `device` into `out` (resized as needed; its capacity is kept).
    pub fn pool<'o>(
        &self,
        device: &mut dyn Device,
        boxes: &[&[BoxF]],
        out: &'o mut Vec<f32>,
    ) -> Result<Pooled<'o>> {
        let rois = self.rois(boxes);
        let channels = self.maps.first().map_or(0, |l| l.channels);
        let res = self.params.output_size;
        out.resize(rois.len() * channels * res * res, 0.0);
        if self.load {
            device.load_features(&self.maps)?;
        }
        device.roi_align(&self.maps, &rois, &self.params, out)?;
        let shape = match self.params.layout {
            FeatureLayout::Nchw => [rois.len(), channels, res, res],
            FeatureLayout::Nhwc => [rois.len(), res, res, channels],
        };
        Ok(Pooled { data: out, shape })
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Tap {
    pos: [u32; 4],
    w: [f32; 4],
}

/// The two neighbouring indices of a coordinate (>= 0) and the coordinate itself; at or past the last
/// row/column both indices and the coordinate are held there, as torchvision's bilinear_interpolate.
#[inline(always)]
fn low_high(v: f32, size: usize) -> (usize, usize, f32) {
    let low = v as usize;
    if low >= size - 1 {
        (size - 1, size - 1, (size - 1) as f32)
    } else {
        (low, low + 1, v)
    }
}

/// torchvision's bilinear_interpolate pre-computation for one sample point.
#[inline]
fn tap(mut y: f32, mut x: f32, height: usize, width: usize) -> Tap {
    if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
        return Tap::default();
    }
    if y <= 0.0 {
        y = 0.0;
    }
    if x <= 0.0 {
        x = 0.0;
    }
    let (y_low, y_high, y) = low_high(y, height);
    let (x_low, x_high, x) = low_high(x, width);
    let ly = y - y_low as f32;
    let lx = x - x_low as f32;
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    Tap {
        pos: [
            (y_low * width + x_low) as u32,
            (y_low * width + x_high) as u32,
            (y_high * width + x_low) as u32,
            (y_high * width + x_high) as u32,
        ],
        w: [hy * hx, hy * lx, ly * hx, ly * lx],
    }
}

/// Fills `taps` for one ROI (bins in row-major order, samples iy-major inside a bin) and returns
/// (samples per bin, count to divide by).
fn roi_taps(
    bbox: &BoxF,
    fm: &FeatureMap<'_>,
    p: &RoiAlignParams,
    taps: &mut Vec<Tap>,
) -> (usize, f32) {
    let offset = if p.aligned { 0.5 } else { 0.0 };
    let scale = fm.spatial_scale;
    let start_w = bbox[0] * scale - offset;
    let start_h = bbox[1] * scale - offset;
    let end_w = bbox[2] * scale - offset;
    let end_h = bbox[3] * scale - offset;
    let mut roi_w = end_w - start_w;
    let mut roi_h = end_h - start_h;
    if !p.aligned {
        roi_w = roi_w.max(1.0);
        roi_h = roi_h.max(1.0);
    }
    let out = p.output_size;
    let bin_h = roi_h / out as f32;
    let bin_w = roi_w / out as f32;
    let (grid_h, grid_w) = if p.sampling_ratio > 0 {
        (p.sampling_ratio as usize, p.sampling_ratio as usize)
    } else {
        (
            (roi_h / out as f32).ceil().max(0.0) as usize,
            (roi_w / out as f32).ceil().max(0.0) as usize,
        )
    };
    let count = (grid_h * grid_w).max(1) as f32;
    taps.clear();
    for ph in 0..out {
        for pw in 0..out {
            for iy in 0..grid_h {
                let y = start_h + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let x = start_w + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    taps.push(tap(y, x, fm.height, fm.width));
                }
            }
        }
    }
    (grid_h * grid_w, count)
}

/// Pools every ROI from its level into `out` ([rois, channels, output_size, output_size]).
/// Convenience form of [`RoiAligner`] for one call.
pub fn roi_align(
    levels: &[FeatureMap<'_>],
    rois: &[Roi],
    p: &RoiAlignParams,
    out: &mut [f32],
) -> Result<()> {
    let mut a = RoiAligner::default();
    a.prepare(levels)?;
    a.pool(levels, rois, p, out)
}

/// The ROIAlign plugin with its buffers. `prepare` lays each channels-first level out channels-last
/// once per frame (the box and mask poolers share it; a channels-last level is read where it is);
/// `pool` then reads, for every sample, four runs of `channels`
/// contiguous values, so the inner loop is a straight vector loop over channels. Every channel still
/// sees torchvision's exact sequence of float operations, so results are bit-identical to the
/// channel-first form.
#[derive(Debug, Default)]
pub struct RoiAligner {
    /// Per level: [batch, height, width, channels]; empty for a level that comes channels-last.
    nhwc: Vec<Vec<f32>>,
}

impl RoiAligner {
    pub fn prepare(&mut self, levels: &[FeatureMap<'_>]) -> Result<()> {
        let Some(first) = levels.first() else {
            return Err(Error::Input("roi_align: no feature levels".into()));
        };
        let channels = first.channels;
        for (i, l) in levels.iter().enumerate() {
            if l.channels != channels || l.height == 0 || l.width == 0 {
                return Err(Error::Input(format!(
                    "roi_align: level {i} is {}x{}x{}, level 0 has {channels} channels",
                    l.channels, l.height, l.width
                )));
            }
            if l.data.len() != l.batch * l.channels * l.height * l.width {
                return Err(Error::Input(format!(
                    "roi_align: level {i} data length does not match its shape"
                )));
            }
            if matches!(l.data, LevelData::U8 { .. }) && l.layout != FeatureLayout::Nhwc {
                return Err(Error::Input(format!(
                    "roi_align: level {i} is uint8 and channels-first (uint8 levels must be channels-last)"
                )));
            }
        }
        self.nhwc.resize_with(levels.len(), Vec::new);
        for (l, dst) in levels.iter().zip(&mut self.nhwc) {
            let LevelData::F32(data) = l.data else {
                dst.clear(); // uint8: channels-last (checked above)
                continue;
            };
            if l.layout == FeatureLayout::Nhwc {
                dst.clear();
                continue;
            }
            let (plane, c) = (l.height * l.width, l.channels);
            dst.resize(l.batch * plane * c, 0.0);
            for (src, img) in data
                .chunks_exact(plane * c)
                .zip(dst.chunks_exact_mut(plane * c))
            {
                // tiles of pixels, in parallel: a tile's channels-last block stays in cache while
                // every channel plane is read contiguously into it
                img.par_chunks_mut(TRANSPOSE_TILE * c)
                    .enumerate()
                    .for_each(|(t, tile)| {
                        let px0 = t * TRANSPOSE_TILE;
                        let n = tile.len() / c;
                        for (ch, chan) in src.chunks_exact(plane).enumerate() {
                            for (i, &v) in chan[px0..px0 + n].iter().enumerate() {
                                tile[i * c + ch] = v;
                            }
                        }
                    });
            }
        }
        Ok(())
    }

    /// Pools `rois` from the levels given to the last `prepare` (same `levels` describe their shapes).
    pub fn pool(
        &self,
        levels: &[FeatureMap<'_>],
        rois: &[Roi],
        p: &RoiAlignParams,
        out: &mut [f32],
    ) -> Result<()> {
        if self.nhwc.len() != levels.len() {
            return Err(Error::Input("roi_align: pool() before prepare()".into()));
        }
        let channels = levels.first().map_or(0, |l| l.channels);
        let bin_count = p.output_size * p.output_size;
        let per_roi = channels * bin_count;
        if out.len() != rois.len() * per_roi {
            return Err(Error::Input(format!(
                "roi_align: output holds {} values, {} rois need {}",
                out.len(),
                rois.len(),
                rois.len() * per_roi
            )));
        }
        if let Some(r) = rois
            .iter()
            .find(|r| r.level >= levels.len() || r.batch >= levels[r.level].batch)
        {
            return Err(Error::Input(format!(
                "roi_align: roi on level {} of image {} is out of range",
                r.level, r.batch
            )));
        }
        if per_roi == 0 {
            return Ok(());
        }
        let kernel = Kernel::detect();
        out.par_chunks_mut(per_roi)
            .zip(rois.par_iter())
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(taps, bins), (dst, roi)| {
                    let fm = &levels[roi.level];
                    let (samples, count) = roi_taps(&roi.bbox, fm, p, taps);
                    let plane = fm.height * fm.width;
                    let image = roi.batch * plane * channels..(roi.batch + 1) * plane * channels;
                    let texels = match (fm.data, fm.layout) {
                        (LevelData::F32(d), FeatureLayout::Nhwc) => Texels::F32(&d[image]),
                        (LevelData::F32(_), FeatureLayout::Nchw) => {
                            Texels::F32(&self.nhwc[roi.level][image])
                        }
                        (
                            LevelData::U8 {
                                data,
                                scale,
                                zero_point,
                            },
                            _,
                        ) => Texels::U8 {
                            data: &data[image],
                            scale,
                            zero_point: zero_point as f32,
                        },
                    };
                    if samples == 0 {
                        dst.fill(0.0);
                        return;
                    }
                    let work = RoiWork {
                        img: texels,
                        taps,
                        samples,
                        count,
                        channels,
                    };
                    match p.layout {
                        FeatureLayout::Nhwc => kernel.pool_roi(work, dst),
                        FeatureLayout::Nchw => {
                            bins.resize(per_roi, 0.0);
                            kernel.pool_roi(work, bins);
                            channels_first(bins, channels, dst);
                        }
                    }
                },
            );
        Ok(())
    }
}

/// The widest vector instructions this CPU has for [`pool_roi`] (checked once per call).
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Generic
    }

    fn pool_roi(self, work: RoiWork<'_>, bins: &mut [f32]) {
        match self {
            Kernel::Generic => pool_roi(work, bins),
            // SAFETY: `detect` saw the CPU support these features; the functions only use safe code.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { pool_roi_avx2(work, bins) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { pool_roi_avx512(work, bins) },
        }
    }
}

/// What [`pool_roi`] needs of one ROI: its level's image, its taps (`samples` a bin) and the
/// count each bin's sum is divided by.
#[derive(Debug, Clone, Copy)]
struct RoiWork<'a> {
    img: Texels<'a>,
    taps: &'a [Tap],
    samples: usize,
    count: f32,
    channels: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_roi_avx2(work: RoiWork<'_>, bins: &mut [f32]) {
    pool_roi(work, bins);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_roi_avx512(work: RoiWork<'_>, bins: &mut [f32]) {
    pool_roi(work, bins);
}

/// One ROI: each bin's samples summed channels-last into `bins` ([bin][channel], contiguous, so the
/// sums and the division by `count` are straight vector loops). Every value sees torchvision's
/// operations in torchvision's order (no FMA: rounding is unchanged).
#[inline(always)]
fn pool_roi(work: RoiWork<'_>, bins: &mut [f32]) {
    let RoiWork {
        img,
        taps,
        samples,
        count,
        channels,
    } = work;
    if channels == 0 || samples == 0 {
        return;
    }
    for (acc, t) in bins
        .chunks_exact_mut(channels)
        .zip(taps.chunks_exact(samples))
    {
        acc.fill(0.0);
        // plain loops: an iterator adapter's body may be compiled apart, without the caller's features
        match img {
            Texels::F32(img) => {
                for s in t {
                    accumulate(acc, img, s, channels);
                }
            }
            Texels::U8 {
                data,
                scale,
                zero_point,
            } => {
                for s in t {
                    accumulate_u8(acc, data, s, channels, scale, zero_point);
                }
            }
        }
    }
    for a in bins.iter_mut() {
        *a /= count;
    }
}

/// [bin][channel] -> [channel][bin] (torchvision's layout), reading `bins` in order.
fn channels_first(bins: &[f32], channels: usize, dst: &mut [f32]) {
    let bin_count = bins.len() / channels.max(1);
    for (bin, values) in bins.chunks_exact(channels.max(1)).enumerate() {
        for (c, &v) in values.iter().enumerate() {
            dst[c * bin_count + bin] = v;
        }
    }
}

/// One image of one level, channels-last, as [`pool_roi`] reads it.
#[derive(Debug, Clone, Copy)]
enum Texels<'a> {
    F32(&'a [f32]),
    /// The zero point as a float: (q - zp) of two small integers is exact in f32, as in i32.
    U8 {
        data: &'a [u8],
        scale: f32,
        zero_point: f32,
    },
}

/// [`accumulate`] on uint8 values, each dequantized first as ONNX's DequantizeLinear does, so the sums
/// are those of the float level bit for bit.
#[inline(always)]
fn accumulate_u8(
    acc: &mut [f32],
    img: &[u8],
    s: &Tap,
    channels: usize,
    scale: f32,
    zero_point: f32,
) {
    let at = |k: usize| &img[s.pos[k] as usize * channels..s.pos[k] as usize * channels + channels];
    let (f0, f1, f2, f3) = (at(0), at(1), at(2), at(3));
    let [w0, w1, w2, w3] = s.w;
    let v = |q: u8| (q as f32 - zero_point) * scale;
    for ((((a, &q0), &q1), &q2), &q3) in acc.iter_mut().zip(f0).zip(f1).zip(f2).zip(f3) {
        *a += w0 * v(q0) + w1 * v(q1) + w2 * v(q2) + w3 * v(q3);
    }
}

/// acc[c] += w0*f0[c] + w1*f1[c] + w2*f2[c] + w3*f3[c]: torchvision's per-sample expression, vectorized
/// across channels by the caller's target features.
#[inline(always)]
fn accumulate(acc: &mut [f32], img: &[f32], s: &Tap, channels: usize) {
    let at = |k: usize| &img[s.pos[k] as usize * channels..s.pos[k] as usize * channels + channels];
    let (f0, f1, f2, f3) = (at(0), at(1), at(2), at(3));
    let [w0, w1, w2, w3] = s.w;
    for ((((a, &v0), &v1), &v2), &v3) in acc.iter_mut().zip(f0).zip(f1).zip(f2).zip(f3) {
        *a += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One image, one channel, at image resolution.
    fn one_channel(data: &[f32], height: usize, width: usize) -> FeatureMap<'_> {
        FeatureMap {
            data: data.into(),
            layout: FeatureLayout::Nchw,
            batch: 1,
            channels: 1,
            height,
            width,
            spatial_scale: 1.0,
        }
    }

    /// 12 ROIs over two images and two levels, of growing sizes.
    fn two_images_two_levels() -> Vec<Roi> {
        (0..12)
            .map(|i| Roi {
                batch: i % 2,
                level: (i / 2) % 2,
                bbox: [i as f32 * 0.7, 1.3, 4.0 + i as f32, 6.5 + 0.3 * i as f32],
            })
            .collect()
    }

    fn params(output_size: usize, sampling_ratio: i32, aligned: bool) -> RoiAlignParams {
        RoiAlignParams {
            output_size,
            layout: FeatureLayout::Nchw,
            sampling_ratio,
            aligned,
        }
    }

    /// A ROI on the first image and level.
    fn roi(bbox: BoxF) -> Roi {
        Roi {
            batch: 0,
            level: 0,
            bbox,
        }
    }

    fn ramp(h: usize, w: usize) -> Vec<f32> {
        (0..h * w)
            .map(|i| (i % w) as f32 + 10.0 * (i / w) as f32)
            .collect()
    }

    #[test]
    fn linear_field_is_sampled_exactly() {
        // on f(y, x) = x + 10 y, bilinear sampling is exact: the bin mean is the value at its centre
        let data = ramp(16, 16);
        let fm = one_channel(&data, 16, 16);
        let p = params(2, 2, true);
        let roi = roi([2.5, 4.5, 6.5, 8.5]);
        let mut out = vec![0.0; 4];
        roi_align(&[fm], &[roi], &p, &mut out).unwrap();
        // aligned: roi starts at (2, 4), bins of 2x2 centred at x=3,5 and y=5,7
        assert_eq!(out, vec![3.0 + 50.0, 5.0 + 50.0, 3.0 + 70.0, 5.0 + 70.0]);
    }

    #[test]
    fn outside_samples_count_but_contribute_zero() {
        let data = vec![1.0; 4 * 4];
        let fm = one_channel(&data, 4, 4);
        let p = params(1, 2, false);
        // samples at x = 5.5 and 9.5 (beyond width + 1 is excluded only above width): x=5.5 > 4 -> 0
        let roi = roi([4.0, 0.0, 12.0, 4.0]);
        let mut out = vec![0.0; 1];
        roi_align(&[fm], &[roi], &p, &mut out).unwrap();
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn prepare_lays_out_channels_last_exactly() {
        // planes that are not a multiple of the tile, two images, two levels
        let shapes = [(2, 5, 7, 37), (2, 5, 3, 1)];
        let datas: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(b, c, h, w)| (0..b * c * h * w).map(|i| i as f32).collect())
            .collect();
        let maps: Vec<FeatureMap<'_>> = shapes
            .iter()
            .zip(&datas)
            .map(|(&(batch, channels, height, width), data)| FeatureMap {
                data: data.as_slice().into(),
                layout: FeatureLayout::Nchw,
                batch,
                channels,
                height,
                width,
                spatial_scale: 1.0,
            })
            .collect();
        let mut a = RoiAligner::default();
        a.prepare(&maps).unwrap();
        for ((m, nhwc), data) in maps.iter().zip(&a.nhwc).zip(&datas) {
            let plane = m.height * m.width;
            for b in 0..m.batch {
                for c in 0..m.channels {
                    for px in 0..plane {
                        let nchw = data[(b * m.channels + c) * plane + px];
                        assert_eq!(nhwc[(b * plane + px) * m.channels + c], nchw);
                    }
                }
            }
        }
    }

    #[test]
    fn channels_last_levels_pool_bit_identically() {
        // two levels, two images, 5 channels: the same values laid out both ways
        let shapes = [(2usize, 5usize, 9usize, 13usize), (2, 5, 5, 7)];
        let nchw: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(b, c, h, w)| {
                (0..b * c * h * w)
                    .map(|i| (i as f32 * 0.37).sin())
                    .collect()
            })
            .collect();
        let nhwc: Vec<Vec<f32>> = shapes
            .iter()
            .zip(&nchw)
            .map(|(&(b, c, h, w), d)| {
                let plane = h * w;
                let mut t = vec![0.0; d.len()];
                for i in 0..b {
                    for ch in 0..c {
                        for px in 0..plane {
                            t[(i * plane + px) * c + ch] = d[(i * c + ch) * plane + px];
                        }
                    }
                }
                t
            })
            .collect();
        fn maps<'d>(
            shapes: &[(usize, usize, usize, usize)],
            datas: &'d [Vec<f32>],
            layout: FeatureLayout,
        ) -> Vec<FeatureMap<'d>> {
            shapes
                .iter()
                .zip(datas)
                .enumerate()
                .map(
                    |(k, (&(batch, channels, height, width), data))| FeatureMap {
                        data: data.as_slice().into(),
                        layout,
                        batch,
                        channels,
                        height,
                        width,
                        spatial_scale: 1.0 / (1 << k) as f32,
                    },
                )
                .collect()
        }
        let rois = two_images_two_levels();
        for p in [params(7, 2, false), params(3, 0, true)] {
            let n = rois.len() * 5 * p.output_size * p.output_size;
            let (mut a, mut b) = (vec![0.0; n], vec![1.0; n]);
            roi_align(
                &maps(&shapes, &nchw, FeatureLayout::Nchw),
                &rois,
                &p,
                &mut a,
            )
            .unwrap();
            let mut aligner = RoiAligner::default();
            let last = maps(&shapes, &nhwc, FeatureLayout::Nhwc);
            aligner.prepare(&last).unwrap();
            assert!(aligner.nhwc.iter().all(Vec::is_empty), "nothing copied");
            aligner.pool(&last, &rois, &p, &mut b).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn uint8_levels_pool_as_their_dequantized_floats_bit_for_bit() {
        // two levels, two images; 5 channels (no full vector) and 64 (whole AVX-512 vectors); zero
        // points at both ends and inside; values across the whole byte range
        for channels in [5usize, 64] {
            let shapes = [(2usize, channels, 9usize, 13usize), (2, channels, 5, 7)];
            let quant = [(0.037f32, 0u8), (1.9e-3, 255)];
            let bytes: Vec<Vec<u8>> = shapes
                .iter()
                .map(|&(b, c, h, w)| {
                    (0..b * c * h * w)
                        .map(|i| ((i * 97 + i / 7) % 256) as u8)
                        .collect()
                })
                .collect();
            for zp_mid in [false, true] {
                let quant: Vec<(f32, u8)> = quant
                    .iter()
                    .map(|&(s, z)| (s, if zp_mid { 131 } else { z }))
                    .collect();
                // ONNX DequantizeLinear: (q - zero_point) in int32, to float, times scale
                let floats: Vec<Vec<f32>> = bytes
                    .iter()
                    .zip(&quant)
                    .map(|(q, &(scale, zp))| {
                        q.iter()
                            .map(|&v| (v as i32 - zp as i32) as f32 * scale)
                            .collect()
                    })
                    .collect();
                fn level<'d>(
                    shape: (usize, usize, usize, usize),
                    k: usize,
                    data: LevelData<'d>,
                ) -> FeatureMap<'d> {
                    let (batch, channels, height, width) = shape;
                    FeatureMap {
                        data,
                        layout: FeatureLayout::Nhwc,
                        batch,
                        channels,
                        height,
                        width,
                        spatial_scale: 1.0 / (1 << k) as f32,
                    }
                }
                let as_f32: Vec<FeatureMap<'_>> = (0..2)
                    .map(|k| level(shapes[k], k, floats[k].as_slice().into()))
                    .collect();
                let as_u8: Vec<FeatureMap<'_>> = (0..2)
                    .map(|k| {
                        let (scale, zero_point) = quant[k];
                        let data = LevelData::U8 {
                            data: &bytes[k],
                            scale,
                            zero_point,
                        };
                        level(shapes[k], k, data)
                    })
                    .collect();
                let rois = two_images_two_levels();
                for p in [params(7, 2, false), params(3, 0, true)] {
                    let n = rois.len() * channels * p.output_size * p.output_size;
                    let (mut a, mut b) = (vec![0.0; n], vec![1.0; n]);
                    roi_align(&as_f32, &rois, &p, &mut a).unwrap();
                    roi_align(&as_u8, &rois, &p, &mut b).unwrap();
                    assert!(a.iter().any(|&v| v != 0.0));
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{channels} channels, zero points {quant:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn channels_last_output_is_the_channels_first_one_transposed() {
        let (c, h, w) = (5usize, 11usize, 13usize);
        let data: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.61).cos()).collect();
        let fm = FeatureMap {
            data: data.as_slice().into(),
            layout: FeatureLayout::Nhwc,
            batch: 1,
            channels: c,
            height: h,
            width: w,
            spatial_scale: 1.0,
        };
        let rois: Vec<Roi> = (0..4)
            .map(|i| roi([i as f32, 0.5 * i as f32, 6.0 + i as f32, 9.0]))
            .collect();
        for p in [params(7, 2, false), params(3, 0, true)] {
            let s = p.output_size;
            let bins = s * s;
            let mut first = vec![0.0; rois.len() * c * bins];
            let mut last = vec![1.0; first.len()];
            roi_align(&[fm], &rois, &p, &mut first).unwrap();
            let p_last = RoiAlignParams {
                layout: FeatureLayout::Nhwc,
                ..p
            };
            roi_align(&[fm], &rois, &p_last, &mut last).unwrap();
            for r in 0..rois.len() {
                for ch in 0..c {
                    for b in 0..bins {
                        let a = first[(r * c + ch) * bins + b];
                        assert_eq!(a.to_bits(), last[(r * bins + b) * c + ch].to_bits());
                    }
                }
            }
        }
    }

    #[test]
    fn uint8_levels_must_be_channels_last() {
        let q = [7u8; 12];
        let fm = FeatureMap {
            data: LevelData::U8 {
                data: &q,
                scale: 0.5,
                zero_point: 3,
            },
            layout: FeatureLayout::Nchw,
            batch: 1,
            channels: 1,
            height: 3,
            width: 4,
            spatial_scale: 1.0,
        };
        let err = RoiAligner::default().prepare(&[fm]).unwrap_err();
        assert!(err.to_string().contains("channels-last"), "{err}");
    }

    #[test]
    fn level_mapper_matches_fpn_rule() {
        assert_eq!(map_level(&[0.0, 0.0, 224.0, 224.0], 2, 5, 224.0, 4.0), 2); // k=4
        assert_eq!(map_level(&[0.0, 0.0, 112.0, 112.0], 2, 5, 224.0, 4.0), 1); // k=3
        assert_eq!(map_level(&[0.0, 0.0, 10.0, 10.0], 2, 5, 224.0, 4.0), 0); // clamped to 2
        assert_eq!(map_level(&[0.0, 0.0, 0.0, 0.0], 2, 5, 224.0, 4.0), 0); // log2(0) = -inf
        assert_eq!(map_level(&[0.0, 0.0, 2000.0, 2000.0], 2, 5, 224.0, 4.0), 3);
        assert_eq!(infer_scale(80, 320), 0.25);
        assert_eq!(infer_scale(10, 300), 0.03125);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let data = vec![0.0; 4];
        let fm = one_channel(&data, 2, 2);
        let p = params(2, 2, false);
        let second_image = Roi {
            batch: 1,
            ..roi([0.0; 4])
        };
        assert!(roi_align(&[fm], &[second_image], &p, &mut [0.0; 4]).is_err());
        assert!(roi_align(&[fm], &[roi([0.0; 4])], &p, &mut [0.0; 3]).is_err());
    }
}
