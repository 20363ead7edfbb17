//! Preprocess: 8-bit RGB -> normalized float CHW, resized and zero-padded exactly as torchvision's
//! GeneralizedRCNNTransform does (normalize, then bilinear resize with recomputed scale, then pad /32).

use rayon::prelude::*;

use crate::engine::{QuantizedInput, Transform};
use crate::frame::RgbFrame;

/// Size after torchvision's resize: scale = min(min_size/short, max_size/long) in f64, and
/// `interpolate(scale_factor=..., recompute_scale_factor=True)` floors `dim * scale`.
pub fn resized_size(height: usize, width: usize, t: &Transform) -> (usize, usize) {
    let short = height.min(width) as f64;
    let long = height.max(width) as f64;
    let scale = (t.min_size as f64 / short).min(t.max_size as f64 / long);
    let h = ((height as f64 * scale).floor() as usize).max(1);
    let w = ((width as f64 * scale).floor() as usize).max(1);
    (h, w)
}

/// Rounds up to a multiple of `divisible` (torchvision's batch_images).
pub fn padded(n: usize, divisible: usize) -> usize {
    n.div_ceil(divisible) * divisible
}

/// Source index and weights of one output coordinate of PyTorch's bilinear (align_corners=False)
/// kernel: src = max(scale * (dst + 0.5) - 0.5, 0), scale = in / out computed in f32.
#[derive(Debug, Clone, Copy)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

pub fn linear_taps(input: usize, output: usize) -> Vec<LinearTap> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real as usize).min(input - 1);
            let lambda = (real - i0 as f32).min(1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            LinearTap {
                i0,
                i1,
                w0: 1.0 - lambda,
                w1: lambda,
            }
        })
        .collect()
}

/// Bilinear resize of one f32 plane (PyTorch's evaluation order: rows weight the column blends).
pub fn resize_plane(
    src: &[f32],
    src_w: usize,
    rows: &[LinearTap],
    cols: &[LinearTap],
    dst: &mut [f32],
    dst_stride: usize,
) {
    for (y, r) in rows.iter().enumerate() {
        let a = &src[r.i0 * src_w..(r.i0 + 1) * src_w];
        let b = &src[r.i1 * src_w..(r.i1 + 1) * src_w];
        let out = &mut dst[y * dst_stride..y * dst_stride + cols.len()];
        for (o, c) in out.iter_mut().zip(cols) {
            let t0 = a[c.i0] * c.w0 + a[c.i1] * c.w1;
            let t1 = b[c.i0] * c.w0 + b[c.i1] * c.w1;
            *o = t0 * r.w0 + t1 * r.w1;
        }
    }
}

/// An INT8 backbone's uint8 input from a preprocessed batch (see [`QuantizedInput`]): each float
/// quantized as ONNX's QuantizeLinear does, `pad` pixels of the zero point around, 2x2 blocks to channels
/// 4c + 2a + b, channels-last. Returns the shape [N, H', W', 4C] written into `out`.
pub fn space_to_depth_u8(
    images: &Preprocessed<'_>,
    q: &QuantizedInput,
    out: &mut Vec<u8>,
) -> [usize; 4] {
    let (h, w) = images.padded;
    let n = images.sizes.len();
    let c = images.tensor.len() / (n * h * w).max(1);
    let p = q.pad;
    let (ho, wo, cc) = ((h + 2 * p) / 2, (w + 2 * p) / 2, 4 * c);
    out.clear();
    out.resize(n * ho * wo * cc, 0);
    let quantize = Quantizer::new(q);
    // one thread: a parallel section costs a wake-up of rayon's sleeping workers, which on a
    // virtual machine can take longer (~0.1-1 ms) than this whole pass.
    // Per output row: the 2C source rows it reads, quantized into zero-point-padded rows (a straight
    // loop), then each output pixel's 4C bytes gathered from them in order.
    let padded_w = 2 * wo;
    let mut rows = vec![q.zero_point; 2 * c * padded_w];
    for (row, dst) in out.chunks_exact_mut((wo * cc).max(1)).enumerate() {
        let (img, y) = (row / ho, row % ho);
        let src = &images.tensor[img * c * h * w..(img + 1) * c * h * w];
        for (k, padded) in rows.chunks_exact_mut(padded_w.max(1)).enumerate() {
            let (ch, a) = (k / 2, k % 2);
            padded.fill(q.zero_point);
            // source row 2y + a - pad; outside the image the row stays at the zero point
            if let Some(iy) = (2 * y + a).checked_sub(p).filter(|&iy| iy < h) {
                let line = &src[(ch * h + iy) * w..(ch * h + iy + 1) * w];
                quantize.row(line, &mut padded[p.min(padded_w)..]);
            }
        }
        for (k, padded) in rows.chunks_exact(padded_w.max(1)).enumerate() {
            // channel 4c + 2a + b of pixel x is padded source column 2x + b
            let at = (k / 2) * 4 + (k % 2) * 2;
            for (d, pair) in dst.chunks_exact_mut(cc).zip(padded.chunks_exact(2)) {
                d[at] = pair[0];
                d[at + 1] = pair[1];
            }
        }
    }
    [n, ho, wo, cc]
}

/// MLAS's QuantizeLinear, a row at a time: x / scale clamped to the zero point's range, rounded half
/// to even, plus the zero point. Division, as MLAS divides (a multiplication by the reciprocal can
/// round differently); vectorized with the CPU's widest instructions, ~0.1 ms a frame instead of ~1 ms.
#[derive(Debug, Clone, Copy)]
struct Quantizer {
    scale: f32,
    zero_point: f32,
    lo: f32,
    hi: f32,
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

/// x + 1.5 * 2^23 rounds x half to even (the sum's unit in the last place is 1) for |x| < 2^22, here
/// |x| <= 255, and the integer is then the sum's bits minus those of 1.5 * 2^23: all of it vectorizes,
/// where round_ties_even is a libm call without SSE4.1 and `as i32` a scalar saturating conversion.
const ROUND_HALF_EVEN: f32 = 12_582_912.0;

impl Quantizer {
    fn new(q: &QuantizedInput) -> Self {
        let zero_point = q.zero_point as f32;
        Quantizer {
            scale: q.scale,
            zero_point,
            lo: -zero_point,
            hi: 255.0 - zero_point,
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
        }
    }

    fn row(&self, line: &[f32], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU has AVX2 (checked in `new`); the function only runs safe code.
            unsafe { quantize_row_avx2(self, line, out) };
            return;
        }
        quantize_row(self, line, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(q: &Quantizer, line: &[f32], out: &mut [u8]) {
    quantize_row(q, line, out);
}

#[inline(always)]
fn quantize_row(q: &Quantizer, line: &[f32], out: &mut [u8]) {
    let Quantizer {
        scale,
        zero_point,
        lo,
        hi,
        ..
    } = *q;
    let offset = ROUND_HALF_EVEN.to_bits() as i32 - zero_point as i32;
    for (o, &v) in out.iter_mut().zip(line) {
        let x = (v / scale).max(lo).min(hi);
        // in 0..=255 by the clamp: the cast keeps the value
        *o = ((x + ROUND_HALF_EVEN).to_bits() as i32 - offset) as u8;
    }
}

/// The sizes of one image, needed to clip boxes and map them back.
#[derive(Debug, Clone, Copy)]
pub struct ImageSize {
    /// (height, width) of the frame as given.
    pub original: (usize, usize),
    /// (height, width) after resize, before padding; boxes are clipped to it.
    pub resized: (usize, usize),
}

/// A batch as the backbone takes it.
#[derive(Debug)]
pub struct Preprocessed<'a> {
    /// [N, 3, H, W]: normalized, resized, zero-padded to (H, W) = `padded`.
    pub tensor: &'a [f32],
    /// (H, W): the largest resized image rounded up to `size_divisible`, as torchvision's batch_images.
    pub padded: (usize, usize),
    /// Per image, N of them.
    pub sizes: Vec<ImageSize>,
}

impl Preprocessed<'_> {
    /// Largest resized (height, width) of the batch: the image size MultiScaleRoIAlign infers
    /// its scales from.
    pub fn max_resized(&self) -> (usize, usize) {
        let h = self.sizes.iter().map(|s| s.resized.0).max().unwrap_or(1);
        let w = self.sizes.iter().map(|s| s.resized.1).max().unwrap_or(1);
        (h, w)
    }
}

/// Reusable buffer for preprocessing: the batch tensor.
#[derive(Debug, Default)]
pub struct Preprocessor {
    input: Vec<f32>,
}

impl Preprocessor {
    /// Preprocesses `frames` into one batch, each padded to the largest.
    pub fn batch(&mut self, frames: &[RgbFrame<'_>], t: &Transform) -> Preprocessed<'_> {
        let div = t.size_divisible as usize;
        let (mut ph, mut pw) = (0, 0);
        for f in frames {
            let (rh, rw) = resized_size(f.height, f.width, t);
            ph = ph.max(padded(rh, div));
            pw = pw.max(padded(rw, div));
        }
        let per_image = 3 * ph * pw;
        self.input.resize(frames.len() * per_image, 0.0);
        let sizes = frames
            .iter()
            .zip(self.input.chunks_exact_mut(per_image.max(1)))
            .map(|(f, out)| image(f, t, (ph, pw), out))
            .collect();
        Preprocessed {
            tensor: &self.input,
            padded: (ph, pw),
            sizes,
        }
    }
}

/// Row bands an image is split into: a few per thread of the pool it runs on, at least 4 (one task per
/// band writes that band's rows of all three planes).
const BANDS_PER_THREAD: usize = 3;
const MIN_BANDS: usize = 4;

/// One source row normalized through the channels' tables and blended across columns for all three
/// channels: the first half of resize_plane's sums, computed once per source row instead of once per
/// output row that reads it (upscaling reads most rows twice). The row's bytes go through the tables
/// once (`norm`, interleaved as they come), then each column tap serves the three channels, so a tap
/// is read once instead of three times: the same products in the same order as resize_plane's.
fn blend_row(
    row: &[u8],
    luts: &[[f32; 256]; 3],
    cols: &[LinearTap],
    norm: &mut [f32],
    out: &mut [f32],
) {
    for (n, px) in norm.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
        n[0] = luts[0][px[0] as usize];
        n[1] = luts[1][px[1] as usize];
        n[2] = luts[2][px[2] as usize];
    }
    let rw = cols.len();
    let (r, gb) = out.split_at_mut(rw);
    let (g, b) = gb.split_at_mut(rw);
    for (x, t) in cols.iter().enumerate() {
        let (p0, p1) = (&norm[t.i0 * 3..t.i0 * 3 + 3], &norm[t.i1 * 3..t.i1 * 3 + 3]);
        r[x] = p0[0] * t.w0 + p1[0] * t.w1;
        g[x] = p0[1] * t.w0 + p1[1] * t.w1;
        b[x] = p0[2] * t.w0 + p1[2] * t.w1;
    }
}

/// Writes one normalized, resized image into `out` (3 planes of `pad_h x pad_w`, zero padding).
/// Each value is resize_plane's over the normalized planes, the same operations in the same order,
/// so the tensor is bit-for-bit torchvision's (unit test against the plain computation).
fn image(frame: &RgbFrame<'_>, t: &Transform, pad: (usize, usize), out: &mut [f32]) -> ImageSize {
    let (h, w) = (frame.height, frame.width);
    let (rh, rw) = resized_size(h, w, t);
    let (ph, pw) = pad;
    let rows = linear_taps(h, rh);
    let cols = linear_taps(w, rw);
    // torchvision: image / 255, then (x - mean) / std, in f32; a byte has 256 values, so a table
    // holds each result exactly as computed
    let luts: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / t.input_divisor - t.image_mean[c]) / t.image_std[c])
    });
    let plane = ph * pw;
    let (r, gb) = out[..3 * plane].split_at_mut(plane);
    let (g, b) = gb.split_at_mut(plane);
    let mut planes = [r, g, b].map(|p| {
        let (image, below) = p.split_at_mut(rh * pw);
        below.fill(0.0);
        image
    });
    let [r, g, b] = &mut planes;
    // bands of output rows, in parallel, each writing its rows of the three planes
    let bands = (BANDS_PER_THREAD * rayon::current_num_threads()).max(MIN_BANDS);
    let band = rh.div_ceil(bands).max(1);
    let chunk = (band * pw).max(1);
    r.par_chunks_mut(chunk)
        .zip(g.par_chunks_mut(chunk))
        .zip(b.par_chunks_mut(chunk))
        .zip(rows.par_chunks(band))
        .for_each(|(((r, g), b), taps)| {
            let mut norm = vec![0.0f32; 3 * w];
            // the two blended source rows (3 channels each) the last output row read, by source index
            let mut a = (usize::MAX, vec![0.0f32; 3 * rw]);
            let mut z = (usize::MAX, vec![0.0f32; 3 * rw]);
            let dst = r
                .chunks_exact_mut(pw)
                .zip(g.chunks_exact_mut(pw))
                .zip(b.chunks_exact_mut(pw));
            for (((r, g), b), tap) in dst.zip(taps) {
                for want in [tap.i0, tap.i1] {
                    if a.0 == want || z.0 == want {
                        continue;
                    }
                    // evict the slot holding neither row this output row reads
                    let victim = if a.0 != tap.i0 && a.0 != tap.i1 {
                        &mut a
                    } else {
                        &mut z
                    };
                    blend_row(frame.row(want), &luts, &cols, &mut norm, &mut victim.1);
                    victim.0 = want;
                }
                let of = |i: usize| if a.0 == i { &a.1 } else { &z.1 };
                let (x0, x1) = (of(tap.i0), of(tap.i1));
                for (c, row) in [r, g, b].into_iter().enumerate() {
                    let span = c * rw..(c + 1) * rw;
                    for ((o, v0), v1) in row[..rw].iter_mut().zip(&x0[span.clone()]).zip(&x1[span])
                    {
                        *o = v0 * tap.w0 + v1 * tap.w1;
                    }
                    row[rw..].fill(0.0);
                }
            }
        });
    ImageSize {
        original: (h, w),
        resized: (rh, rw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform(min: u32, max: u32) -> Transform {
        Transform {
            min_size: min,
            max_size: max,
            size_divisible: 32,
            image_mean: [0.0; 3],
            image_std: [1.0; 3],
            input_divisor: 255.0,
        }
    }

    #[test]
    fn resized_size_follows_torchvision() {
        // 640x360 -> scale 320/360: 568.88 floors to 568
        assert_eq!(resized_size(360, 640, &transform(320, 640)), (320, 568));
        // max_size binds for very wide frames
        assert_eq!(resized_size(100, 1000, &transform(320, 640)), (64, 640));
        assert_eq!(padded(568, 32), 576);
        assert_eq!(padded(320, 32), 320);
    }

    #[test]
    fn identity_resize_copies() {
        let taps = linear_taps(4, 4);
        assert!(taps
            .iter()
            .enumerate()
            .all(|(i, t)| t.i0 == i && t.w0 == 1.0));
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 16];
        resize_plane(&src, 4, &taps, &taps, &mut dst, 4);
        assert_eq!(src, dst);
    }

    /// The batch tensor computed the plain way: each channel whole, normalized by the float expression,
    /// resized into a zeroed padded plane.
    fn reference(frames: &[RgbFrame<'_>], t: &Transform, (ph, pw): (usize, usize)) -> Vec<f32> {
        let mut out = vec![0.0f32; frames.len() * 3 * ph * pw];
        for (f, img) in frames.iter().zip(out.chunks_exact_mut(3 * ph * pw)) {
            let (rh, rw) = resized_size(f.height, f.width, t);
            let (rows, cols) = (linear_taps(f.height, rh), linear_taps(f.width, rw));
            for (c, dst) in img.chunks_exact_mut(ph * pw).enumerate() {
                let src: Vec<f32> = (0..f.height)
                    .flat_map(|y| (0..f.width).map(move |x| (y, x)))
                    .map(|(y, x)| {
                        let v = f.row(y)[x * 3 + c] as f32;
                        (v / t.input_divisor - t.image_mean[c]) / t.image_std[c]
                    })
                    .collect();
                resize_plane(&src, f.width, &rows, &cols, dst, pw);
            }
        }
        out
    }

    #[test]
    fn bands_in_parallel_give_the_plain_result_bit_for_bit() {
        let t = Transform {
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            ..transform(64, 128)
        };
        // odd sizes (bands that do not divide the rows), padded rows in the row stride, two sizes in
        // one batch (padding to the larger), up- and downscaling
        let sizes = [(37usize, 53usize, 53 * 3 + 5), (101, 250, 250 * 3)];
        let data: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&(h, _, stride)| {
                (0..h * stride)
                    .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
                    .collect()
            })
            .collect();
        let frames: Vec<RgbFrame<'_>> = sizes
            .iter()
            .zip(&data)
            .map(|(&(h, w, stride), d)| RgbFrame::new(w, h, stride, d).unwrap())
            .collect();
        let mut p = Preprocessor::default();
        // the band count follows the pool's threads: 4, 9 and 24 bands (3 rows each at 64 rows)
        for threads in [1, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for batch in [&frames[..1], &frames[1..], &frames[..]] {
                let got = pool.install(|| p.batch(batch, &t));
                let want = reference(batch, &t, got.padded);
                assert_eq!(got.tensor.len(), want.len());
                let same = got
                    .tensor
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "batch of {} frames, {threads} threads", batch.len());
            }
        }
    }

    #[test]
    fn downscale_by_two_averages_pairs() {
        let taps = linear_taps(4, 2);
        // scale 2: src = 2*(o+0.5)-0.5 = 0.5, 2.5 -> average of neighbours
        assert_eq!((taps[0].i0, taps[0].i1, taps[0].w1), (0, 1, 0.5));
        assert_eq!((taps[1].i0, taps[1].i1, taps[1].w1), (2, 3, 0.5));
    }

    /// The quantized, space-to-depth input as a plain loop: QuantizeLinear by its definition (division,
    /// round half to even, zero point, saturation), the zero point outside the image.
    fn space_to_depth_reference(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        q: &QuantizedInput,
    ) -> Vec<u8> {
        let p = q.pad as isize;
        let (ho, wo) = ((h + 2 * q.pad) / 2, (w + 2 * q.pad) / 2);
        let mut out = vec![0u8; n * ho * wo * 4 * c];
        for i in 0..n {
            for y in 0..ho {
                for xo in 0..wo {
                    for ch in 0..c {
                        for a in 0..2 {
                            for b in 0..2 {
                                let (iy, ix) = (2 * y as isize + a - p, 2 * xo as isize + b - p);
                                let inside =
                                    (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                                let v = if inside {
                                    let f = x[((i * c + ch) * h + iy as usize) * w + ix as usize];
                                    ((f / q.scale).round_ties_even() + q.zero_point as f32)
                                        .clamp(0.0, 255.0) as u8
                                } else {
                                    q.zero_point
                                };
                                let k = ch * 4 + a as usize * 2 + b as usize;
                                out[((i * ho + y) * wo + xo) * 4 * c + k] = v;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_quantized_input_is_quantize_linear_laid_out_space_to_depth() {
        // two images, odd and even pads, values across the range and beyond it (saturation), exact
        // halves (ties go to even), exact zeros (the batch's padding)
        let (n, c, h, w) = (2usize, 3usize, 6usize, 10usize);
        let scale = 0.25f32;
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => 0.125 * (i % 5) as f32, // k/8: halves of the scale's quarter steps
                2 => -40.0,
                3 => 40.0,
                _ => (i as f32 * 0.37).sin() * 20.0,
            })
            .collect();
        let sizes = vec![
            ImageSize {
                original: (h, w),
                resized: (h, w),
            };
            n
        ];
        let images = Preprocessed {
            tensor: &x,
            padded: (h, w),
            sizes,
        };
        for (pad, zero_point) in [(3usize, 116u8), (0, 0), (1, 255), (2, 7)] {
            let q = QuantizedInput {
                space_to_depth: 2,
                pad,
                scale,
                zero_point,
            };
            let mut got = Vec::new();
            let shape = space_to_depth_u8(&images, &q, &mut got);
            assert_eq!(shape, [n, (h + 2 * pad) / 2, (w + 2 * pad) / 2, 4 * c]);
            assert_eq!(
                got,
                space_to_depth_reference(&x, (n, c, h, w), &q),
                "pad {pad}"
            );
        }
    }
}
