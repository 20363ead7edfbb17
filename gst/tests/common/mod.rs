//! Helpers of the plugin's tests: GStreamer with the plugin registered, fixture paths, RGB buffers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Once;

/// GStreamer initialised and the plugin registered in this process (no GST_PLUGIN_PATH needed).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstmaskstream::plugin_register_static().expect("register the maskstream plugin");
    });
}

/// The repository root (the workspace's root package).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn engine_dir() -> PathBuf {
    root().join("engines/shapes")
}

pub fn fixture_image(name: &str) -> image::RgbImage {
    let p = root()
        .join("tests/fixtures/detect")
        .join(name)
        .join("image.png");
    image::open(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_rgb8()
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

/// Properties for a `maskrcnn` on the bundled engine, CPU, two threads (gst-launch syntax).
pub fn maskrcnn_desc() -> String {
    format!(
        "maskrcnn engine={} backend=cpu threads=2",
        engine_dir().display()
    )
}

/// Video caps and a buffer holding `img` in `format` (RGB or a 4-byte RGB layout, GStreamer's
/// default strides, so an odd width gets padded rows).
pub fn video_buffer(
    img: &image::RgbImage,
    format: gst_video::VideoFormat,
) -> (gst::Caps, gst::Buffer) {
    let (w, h) = img.dimensions();
    let info = gst_video::VideoInfo::builder(format, w, h)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    let mut buf = gst::Buffer::with_size(info.size()).unwrap();
    {
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::ZERO);
        b.set_duration(gst::ClockTime::from_mseconds(33));
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(b, &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let comp = frame.format_info().n_components() as usize;
        let data = frame.plane_data_mut(0).unwrap();
        let bpp = if comp == 3 && format == gst_video::VideoFormat::Rgb {
            3
        } else {
            4
        };
        let order: [usize; 3] = match format {
            gst_video::VideoFormat::Rgb | gst_video::VideoFormat::Rgbx => [0, 1, 2],
            gst_video::VideoFormat::Bgrx => [2, 1, 0],
            f => panic!("no test layout for {f:?}"),
        };
        for y in 0..h as usize {
            for x in 0..w as usize {
                let p = img.get_pixel(x as u32, y as u32).0;
                let o = y * stride + x * bpp;
                for c in 0..3 {
                    data[o + order[c]] = p[c];
                }
            }
        }
    }
    (info.to_caps().unwrap(), buf)
}

/// The frame of a packed RGB buffer as tightly packed rows (stride removed).
pub fn rgb_pixels(buf: &gst::BufferRef, caps: &gst::Caps) -> Vec<u8> {
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info).unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let w = frame.width() as usize * 3;
    let data = frame.plane_data(0).unwrap();
    (0..frame.height() as usize)
        .flat_map(|y| data[y * stride..y * stride + w].iter().copied())
        .collect()
}

use gst_video::prelude::*;
