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
pub fn rgb_pixels(buf: &gst::BufferRef, caps: &gst::CapsRef) -> Vec<u8> {
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info).unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let w = frame.width() as usize * 3;
    let data = frame.plane_data(0).unwrap();
    (0..frame.height() as usize)
        .flat_map(|y| data[y * stride..y * stride + w].iter().copied())
        .collect()
}

use gst::prelude::*;
use gst_video::prelude::*;

/// A folder holding only the plugin as cargo built it for this test binary, for GST_PLUGIN_PATH.
///
/// `cargo test` leaves the cdylib in target/<profile>/deps (next to this binary) and only `cargo
/// build` copies it up to target/<profile>, so the copy there may be stale or missing; and deps holds
/// every other shared library of the build, which GStreamer would try as plugins.
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let so = [deps, deps.parent().unwrap()]
        .iter()
        .map(|d| d.join("libgstmaskstream.so"))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no libgstmaskstream.so in {} or above", deps.display()));
    let dir = std::env::temp_dir().join(format!("maskstream-gst-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("libgstmaskstream.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&so, &link).unwrap();
    dir
}

/// Runs `cmd` to the end, killing it (and failing the test) after `limit`.
pub fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let t0 = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {limit:?}, killed; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Decodes a video file to packed RGB frames at `fps` frames per second (videorate picks them).
pub fn decode_sampled(path: &std::path::Path, fps: i32) -> (Vec<Vec<u8>>, usize, usize) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! videorate ! \
         video/x-raw,format=RGB,framerate={fps}/1 ! appsink name=sink sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (mut frames, mut w, mut h) = (Vec::new(), 0, 0);
    while let Ok(sample) = sink.pull_sample() {
        let caps = sample.caps().unwrap();
        let info = gst_video::VideoInfo::from_caps(caps).unwrap();
        w = info.width() as usize;
        h = info.height() as usize;
        frames.push(rgb_pixels(sample.buffer().unwrap(), caps));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (frames, w, h)
}
