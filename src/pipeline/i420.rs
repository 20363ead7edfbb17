//! I420 <-> RGB where the pipeline meets GStreamer: decoded I420 to the RGB the model and the overlay
//! take (`to_rgb`, on the source thread), annotated RGB back to I420 for the encoders (`to_buffer`, on
//! the compositing thread).
//!
//! Decoders give I420 and every video output (x264 in a file, the RTSP server's x264, a preview window)
//! takes it. GStreamer's videoconvert took ~0.3 ms a 640x360 frame here for I420 -> RGB and ~0.5-0.7 ms
//! for RGB -> I420 (its general path: chroma filtering, dithering), CPU that inference needs when it
//! keeps every core busy; the `yuv` crate's SIMD kernels (AVX2/SSE chosen at run time) take ~0.04 ms
//! each way. videoconvert stays in both pipelines for other formats and passes I420 through.

use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::error::{Error, Result};

/// The YCbCr matrix of an output, as GStreamer chooses it for YUV caps that name none (by height:
/// SD BT.601, HD BT.709, UHD BT.2020), so the caps we send and the default agree; limited range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    Bt601,
    Bt709,
    Bt2020,
}

impl Matrix {
    pub fn for_height(height: usize) -> Self {
        if height >= 2160 {
            Matrix::Bt2020
        } else if height > 576 {
            Matrix::Bt709
        } else {
            Matrix::Bt601
        }
    }

    /// The caps' `colorimetry` string.
    pub fn colorimetry(self) -> &'static str {
        match self {
            Matrix::Bt601 => "bt601",
            Matrix::Bt709 => "bt709",
            Matrix::Bt2020 => "bt2020",
        }
    }
}

/// The caps of the I420 frames `to_buffer` makes.
pub fn caps(width: usize, height: usize, fps: (i32, i32)) -> gst::Caps {
    let (n, d) = if fps.0 > 0 && fps.1 > 0 { fps } else { (30, 1) };
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(n, d))
        .field("colorimetry", Matrix::for_height(height).colorimetry())
        .field("chroma-site", "mpeg2")
        .build()
}

/// The size of the encoded outputs of frames `width` x `height`: H.264 in 4:2:0 (x264) takes only
/// even sizes, so an odd side gets one more pixel, a copy of its last (see [`to_buffer`]).
pub fn even_size(width: usize, height: usize) -> (usize, usize) {
    (width.next_multiple_of(2), height.next_multiple_of(2))
}

/// Packed RGB of `size` (`width * 3` bytes a row) as an I420 buffer of `info` (the caps' layout
/// and colorimetry: made once per output by `caps`, so no video meta is needed and the conversion
/// is the one the caps declare), with the given timestamps. `info` may be [`even_size`] of `size`:
/// the extra column and row repeat the last ones.
pub fn to_buffer(
    rgb: &[u8],
    size: (usize, usize),
    info: &gst_video::VideoInfo,
    pts_ns: Option<u64>,
    duration_ns: Option<u64>,
) -> Result<gst::Buffer> {
    let (width, height) = (info.width() as usize, info.height() as usize);
    let fits = size == (width, height) || even_size(size.0, size.1) == (width, height);
    if info.format() != gst_video::VideoFormat::I420 || !fits || rgb.len() < size.0 * size.1 * 3 {
        return Err(Error::Pipeline(format!(
            "annotated frame {}x{} ({} bytes of RGB) for an output of {width}x{height} ({:?})",
            size.0,
            size.1,
            rgb.len(),
            info.format(),
        )));
    }
    let padded;
    let rgb = if size == (width, height) {
        rgb
    } else {
        padded = pad_edges(rgb, size, (width, height));
        &padded[..]
    };
    let mut out = vec![0u8; info.size()];
    let (strides, offsets) = (info.stride(), info.offset());
    let plane = |i: usize| (offsets[i], strides[i] as usize);
    convert(
        rgb,
        (width, height),
        &mut out,
        [plane(0), plane(1), plane(2)],
        colorimetry(info),
    )?;
    let mut buffer = gst::Buffer::from_mut_slice(out);
    if let Some(b) = buffer.get_mut() {
        b.set_pts(pts_ns.map(gst::ClockTime::from_nseconds));
        b.set_duration(duration_ns.map(gst::ClockTime::from_nseconds));
    }
    Ok(buffer)
}

/// `rgb` (`w` x `h`) in a frame of `to` (no smaller), the last column and row repeated outwards.
fn pad_edges(rgb: &[u8], (w, h): (usize, usize), to: (usize, usize)) -> Vec<u8> {
    let mut out = Vec::with_capacity(to.0 * to.1 * 3);
    for row in rgb.chunks_exact(w * 3).take(h) {
        out.extend_from_slice(row);
        let last = &row[row.len() - 3..];
        for _ in w..to.0 {
            out.extend_from_slice(last);
        }
    }
    let row = to.0 * 3;
    for _ in h..to.1 {
        out.extend_from_within(out.len() - row..);
    }
    out
}

/// A decoded I420 frame (planes and strides as `frame` maps them) as packed RGB (`width * 3` a
/// row), by the colorimetry its caps declare.
pub fn to_rgb(frame: &gst_video::VideoFrameRef<&gst::BufferRef>) -> Result<Vec<u8>> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let fail = |what: String| Error::Pipeline(format!("decoded I420 frame {w}x{h}: {what}"));
    if frame.format() != gst_video::VideoFormat::I420 {
        return Err(fail(format!("the frame is {:?}", frame.format())));
    }
    let plane = |i: u32| frame.plane_data(i).map_err(|e| fail(e.to_string()));
    let stride = |i: usize| frame.plane_stride()[i] as u32;
    let image = yuv::YuvPlanarImage {
        y_plane: plane(0)?,
        y_stride: stride(0),
        u_plane: plane(1)?,
        u_stride: stride(1),
        v_plane: plane(2)?,
        v_stride: stride(2),
        width: w as u32,
        height: h as u32,
    };
    let (range, matrix) = colorimetry(frame.info());
    let mut rgb = vec![0u8; w * h * 3];
    yuv::yuv420_to_rgb(&image, &mut rgb, (w * 3) as u32, range, matrix)
        .map_err(|e| fail(e.to_string()))?;
    Ok(rgb)
}

/// The range and matrix of a video's colorimetry, for both directions (BT.601 where it names none
/// the crate knows).
fn colorimetry(info: &gst_video::VideoInfo) -> (yuv::YuvRange, yuv::YuvStandardMatrix) {
    let c = info.colorimetry();
    let matrix = match c.matrix() {
        gst_video::VideoColorMatrix::Bt709 => yuv::YuvStandardMatrix::Bt709,
        gst_video::VideoColorMatrix::Bt2020 => yuv::YuvStandardMatrix::Bt2020,
        gst_video::VideoColorMatrix::Smpte240m => yuv::YuvStandardMatrix::Smpte240,
        gst_video::VideoColorMatrix::Fcc => yuv::YuvStandardMatrix::Fcc,
        _ => yuv::YuvStandardMatrix::Bt601,
    };
    let range = match c.range() {
        gst_video::VideoColorRange::Range0_255 => yuv::YuvRange::Full,
        _ => yuv::YuvRange::Limited,
    };
    (range, matrix)
}

/// RGB to the three planes (offset, stride) of `out`, by the `yuv` crate's SIMD kernels (AVX2/SSE4.1
/// chosen at run time, its high-precision mode); chroma from each 2x2 block.
fn convert(
    rgb: &[u8],
    (w, h): (usize, usize),
    out: &mut [u8],
    planes: [(usize, usize); 3],
    (range, matrix): (yuv::YuvRange, yuv::YuvStandardMatrix),
) -> Result<()> {
    let (y_plane, chroma) = out.split_at_mut(planes[1].0);
    let (u_plane, v_plane) = chroma.split_at_mut(planes[2].0 - planes[1].0);
    let (ch, cs) = (h.div_ceil(2), planes[1].1);
    let mut image = yuv::YuvPlanarImageMut {
        y_plane: yuv::BufferStoreMut::Borrowed(&mut y_plane[..planes[0].1 * h]),
        y_stride: planes[0].1 as u32,
        u_plane: yuv::BufferStoreMut::Borrowed(&mut u_plane[..cs * ch]),
        u_stride: cs as u32,
        v_plane: yuv::BufferStoreMut::Borrowed(&mut v_plane[..planes[2].1 * ch]),
        v_stride: planes[2].1 as u32,
        width: w as u32,
        height: h as u32,
    };
    yuv::rgb_to_yuv420(
        &mut image,
        rgb,
        (w * 3) as u32,
        range,
        matrix,
        yuv::YuvConversionMode::Balanced,
    )
    .map_err(|e| Error::Pipeline(format!("RGB -> I420 of {w}x{h}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (Kr, Kb) of the matrix.
    fn kr_kb(m: Matrix) -> (f64, f64) {
        match m {
            Matrix::Bt601 => (0.299, 0.114),
            Matrix::Bt709 => (0.2126, 0.0722),
            Matrix::Bt2020 => (0.2627, 0.0593),
        }
    }

    /// `convert`'s colorimetry argument for limited-range `m`.
    fn limited(m: Matrix) -> (yuv::YuvRange, yuv::YuvStandardMatrix) {
        let matrix = match m {
            Matrix::Bt601 => yuv::YuvStandardMatrix::Bt601,
            Matrix::Bt709 => yuv::YuvStandardMatrix::Bt709,
            Matrix::Bt2020 => yuv::YuvStandardMatrix::Bt2020,
        };
        (yuv::YuvRange::Limited, matrix)
    }

    /// An I420 layout as the outputs' caps give it.
    fn output_info(w: usize, h: usize) -> gst_video::VideoInfo {
        gst::init().unwrap();
        gst_video::VideoInfo::from_caps(&caps(w, h, (10, 1))).unwrap()
    }

    /// The float definition of limited-range YCbCr.
    fn reference(p: [f64; 3], m: Matrix) -> [f64; 3] {
        let (kr, kb) = kr_kb(m);
        let y = kr * p[0] + (1.0 - kr - kb) * p[1] + kb * p[2];
        let u = (p[2] - y) / (2.0 * (1.0 - kb));
        let v = (p[0] - y) / (2.0 * (1.0 - kr));
        [
            16.0 + y * 219.0 / 255.0,
            128.0 + u * 224.0 / 255.0,
            128.0 + v * 224.0 / 255.0,
        ]
    }

    #[test]
    fn odd_frames_are_encoded_one_pixel_larger_with_their_edges_repeated() {
        assert_eq!(even_size(321, 241), (322, 242));
        assert_eq!(even_size(320, 240), (320, 240));
        let (w, h) = (5usize, 3usize);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let padded = pad_edges(&rgb, (w, h), (6, 4));
        let px = |x: usize, y: usize| &padded[(y * 6 + x) * 3..(y * 6 + x) * 3 + 3];
        for y in 0..4 {
            for x in 0..6 {
                let (sx, sy) = (x.min(w - 1), y.min(h - 1));
                assert_eq!(px(x, y), &rgb[(sy * w + sx) * 3..(sy * w + sx) * 3 + 3]);
            }
        }
        let info = output_info(6, 4);
        let direct = to_buffer(&padded, (6, 4), &info, None, None).unwrap();
        let odd = to_buffer(&rgb, (w, h), &info, None, None).unwrap();
        assert_eq!(
            direct.map_readable().unwrap().as_slice(),
            odd.map_readable().unwrap().as_slice()
        );
        // anything but the frame's own size or its even size is refused
        assert!(to_buffer(&rgb, (w, h), &output_info(8, 4), None, None).is_err());
        assert!(to_buffer(&rgb[..10], (w, h), &info, None, None).is_err());
    }

    #[test]
    fn known_colours_have_their_textbook_values() {
        // BT.601 limited range: white (235, 128, 128), black (16, 128, 128), red (81, 90, 240)
        let (w, h) = (2, 2);
        for (rgb, yuv) in [
            ([255u8, 255, 255], [235u8, 128, 128]),
            ([0, 0, 0], [16, 128, 128]),
            ([255, 0, 0], [81, 90, 240]),
            ([0, 0, 255], [41, 240, 110]),
        ] {
            let data: Vec<u8> = rgb.iter().copied().cycle().take(w * h * 3).collect();
            let mut out = vec![0u8; 6];
            convert(
                &data,
                (w, h),
                &mut out,
                [(0, 2), (4, 1), (5, 1)],
                limited(Matrix::Bt601),
            )
            .unwrap();
            assert_eq!(
                out,
                [yuv[0], yuv[0], yuv[0], yuv[0], yuv[1], yuv[2]],
                "{rgb:?}"
            );
        }
    }

    /// The kernels' fixed-point coefficients (13 bits) round once more than the float definition.
    const TOLERANCE: f64 = 1.0;

    #[test]
    fn every_pixel_within_rounding_of_the_float_definition_at_odd_sizes() {
        for m in [Matrix::Bt601, Matrix::Bt709, Matrix::Bt2020] {
            let (w, h) = (7, 5);
            let rgb: Vec<u8> = (0..w * h * 3)
                .map(|i| ((i * 97 + 13) % 256) as u8)
                .collect();
            let (cw, ch) = (4, 3);
            let mut out = vec![0u8; w * h + 2 * cw * ch];
            convert(
                &rgb,
                (w, h),
                &mut out,
                [(0, w), (w * h, cw), (w * h + cw * ch, cw)],
                limited(m),
            )
            .unwrap();
            let px = |x: usize, y: usize| {
                let i = (y * w + x) * 3;
                [rgb[i] as f64, rgb[i + 1] as f64, rgb[i + 2] as f64]
            };
            for y in 0..h {
                for x in 0..w {
                    let want = reference(px(x, y), m)[0];
                    assert!(
                        (out[y * w + x] as f64 - want).abs() <= TOLERANCE,
                        "{m:?} Y at {x},{y}: {} vs {want}",
                        out[y * w + x]
                    );
                }
            }
            for cy in 0..ch {
                for cx in 0..cw {
                    let mut mean = [0.0; 3];
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let p = px((2 * cx + dx).min(w - 1), (2 * cy + dy).min(h - 1));
                        (0..3).for_each(|k| mean[k] += p[k] / 4.0);
                    }
                    let want = reference(mean, m);
                    let u = out[w * h + cy * cw + cx] as f64;
                    let v = out[w * h + cw * ch + cy * cw + cx] as f64;
                    assert!(
                        (u - want[1]).abs() <= TOLERANCE,
                        "{m:?} U at {cx},{cy}: {u} vs {}",
                        want[1]
                    );
                    assert!(
                        (v - want[2]).abs() <= TOLERANCE,
                        "{m:?} V at {cx},{cy}: {v} vs {}",
                        want[2]
                    );
                }
            }
        }
    }

    /// One buffer of caps `from` through videoconvert into caps `to`.
    fn through_videoconvert(from: &str, to: &str, buffer: gst::Buffer) -> gst::Sample {
        let caps = |c: &str| c.replace(' ', "");
        let pipeline = gst::parse::launch(&format!(
            "appsrc name=src caps={} ! videoconvert ! {} ! appsink name=sink",
            caps(from),
            caps(to)
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline.by_name("src").unwrap();
        let src = src.downcast::<gstreamer_app::AppSrc>().unwrap();
        let sink = pipeline.by_name("sink").unwrap();
        let sink = sink.downcast::<gstreamer_app::AppSink>().unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        src.push_buffer(buffer).unwrap();
        let _ = src.end_of_stream();
        let sample = sink.pull_sample().unwrap();
        pipeline.set_state(gst::State::Null).unwrap();
        sample
    }

    /// GStreamer's own RGB -> I420 (videoconvert, what the sinks did before) gives the same planes to
    /// within its lower-precision arithmetic, away from colour borders (its chroma filter spans them).
    #[test]
    fn planes_match_videoconverts_own_conversion() {
        gst::init().unwrap();
        for (w, h) in [(20, 10), (640, 720)] {
            // 4x4 blocks of colour (padded chroma rows at 20 wide, as tight RGB rows need a width
            // of 4n; BT.709 at 720 lines)
            let colour = |x: usize, y: usize| {
                let k = (x / 4 + 3 * (y / 4)) % 4;
                [
                    [200u8, 40, 60],
                    [30, 120, 220],
                    [250, 250, 20],
                    [90, 90, 90],
                ][k]
            };
            let rgb: Vec<u8> = (0..w * h).flat_map(|i| colour(i % w, i / w)).collect();
            let ours = to_buffer(&rgb, (w, h), &output_info(w, h), Some(0), Some(1)).unwrap();
            let sample = through_videoconvert(
                &format!("video/x-raw,format=RGB,width={w},height={h},framerate=10/1"),
                &caps(w, h, (10, 1)).to_string(),
                gst::Buffer::from_mut_slice(rgb.clone()),
            );
            let theirs = sample.buffer().unwrap().map_readable().unwrap();
            let ours = ours.map_readable().unwrap();
            let info = output_info(w, h);
            assert_eq!(theirs.len(), ours.len());
            for p in 0..3 {
                let (sub, off, stride) = (
                    if p == 0 { 1 } else { 2 },
                    info.offset()[p],
                    info.stride()[p] as usize,
                );
                for y in 0..h.div_ceil(sub) {
                    for x in 0..w.div_ceil(sub) {
                        // only samples whose neighbourhood is one colour block
                        let (px, py) = (x * sub, y * sub);
                        let near = |d: usize| (px + d) % 4 < 2 * d + 1 || (py + d) % 4 < 2 * d + 1;
                        if near(1) && p > 0 {
                            continue;
                        }
                        let (a, b) = (ours[off + y * stride + x], theirs[off + y * stride + x]);
                        assert!(
                            (a as i32 - b as i32).abs() <= 1,
                            "{w}x{h} plane {p} at {x},{y}: ours {a}, videoconvert {b}"
                        );
                    }
                }
            }
        }
    }

    /// Decoded frames of each colorimetry become the RGB of the float definition (to within rounding)
    /// and that videoconvert makes of them (to within its coarser fixed point: up to 4 levels off the
    /// definition here; a wrong matrix or range is off by tens), padded strides included.
    #[test]
    fn to_rgb_agrees_with_videoconvert_for_each_colorimetry() {
        gst::init().unwrap();
        let (w, h) = (20usize, 12usize);
        let cases = [
            ("bt601", Matrix::Bt601, false),
            ("bt709", Matrix::Bt709, false),
            ("1:3:5:1", Matrix::Bt709, true),
            ("bt2020", Matrix::Bt2020, false),
        ];
        for (colorimetry, matrix, full) in cases {
            let caps = gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .field("width", w as i32)
                .field("height", h as i32)
                .field("framerate", gst::Fraction::new(10, 1))
                .field("colorimetry", colorimetry)
                .build();
            let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
            // 4x4 blocks of one Y, U, V each
            let mut data = vec![0u8; info.size()];
            for p in 0..3 {
                let sub = if p == 0 { 1 } else { 2 };
                let (off, stride) = (info.offset()[p], info.stride()[p] as usize);
                for y in 0..h.div_ceil(sub) {
                    for x in 0..w.div_ceil(sub) {
                        let block = (x * sub / 4 + 5 * (y * sub / 4)) % 7;
                        data[off + y * stride + x] =
                            [16, 60, 120, 200, 235, 90, 150][(block + 2 * p) % 7];
                    }
                }
            }
            let buffer = gst::Buffer::from_mut_slice(data);
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).unwrap();
            let ours = to_rgb(&frame).unwrap();
            let raw = buffer.map_readable().unwrap();
            let yuv_at = |x: usize, y: usize| {
                [0, 1, 2].map(|p| {
                    let sub = if p == 0 { 1 } else { 2 };
                    let (off, stride) = (info.offset()[p], info.stride()[p] as usize);
                    raw[off + (y / sub) * stride + x / sub] as f64
                })
            };
            // the float definition, inverted
            let expected = |[y, u, v]: [f64; 3]| {
                let (kr, kb) = kr_kb(matrix);
                let (y, u, v) = if full {
                    (y, u - 128.0, v - 128.0)
                } else {
                    (
                        (y - 16.0) * 255.0 / 219.0,
                        (u - 128.0) * 255.0 / 224.0,
                        (v - 128.0) * 255.0 / 224.0,
                    )
                };
                let r = y + 2.0 * (1.0 - kr) * v;
                let b = y + 2.0 * (1.0 - kb) * u;
                let g = (y - kr * r - kb * b) / (1.0 - kr - kb);
                [r, g, b].map(|c| c.clamp(0.0, 255.0))
            };
            let sample =
                through_videoconvert(&caps.to_string(), "video/x-raw,format=RGB", buffer.clone());
            let theirs = sample.buffer().unwrap().map_readable().unwrap();
            let stride = gst_video::VideoInfo::from_caps(sample.caps().unwrap())
                .unwrap()
                .stride()[0];
            // inside the blocks: chroma upsampling may blend neighbouring blocks at their borders
            for y in (0..h).filter(|y| (1..=2).contains(&(y % 4))) {
                for x in (0..w).filter(|x| (1..=2).contains(&(x % 4))) {
                    let a = &ours[(y * w + x) * 3..][..3];
                    let b = &theirs[y * stride as usize + x * 3..][..3];
                    let want = expected(yuv_at(x, y));
                    for k in 0..3 {
                        assert!(
                            (a[k] as f64 - want[k]).abs() <= TOLERANCE + 0.5
                                && (a[k] as i32 - b[k] as i32).abs() <= 6,
                            "{colorimetry} at {x},{y}: ours {a:?}, definition {want:?}, videoconvert {b:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn to_rgb_refuses_a_frame_of_another_format() {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 4, 2)
            .build()
            .unwrap();
        let buffer = gst::Buffer::from_mut_slice(vec![0u8; info.size()]);
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).unwrap();
        let e = to_rgb(&frame).unwrap_err().to_string();
        assert!(e.contains("4x2") && e.contains("Rgb"), "{e}");
    }
}
