//! Helpers shared by the integration tests: the binary, fixture paths and .npy reading, JSON Lines
//! outputs, child processes, an RTSP camera stand-in.
#![allow(dead_code)]

pub mod camera;
pub mod http;
pub mod roi_align;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::ArrayD;

/// The maskstream binary, run from the repository root (so relative paths like assets/... work).
pub fn maskstream() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_maskstream"));
    c.current_dir(root());
    c
}

/// `maskstream run --backend cpu --input assets/shapes-demo.mp4`, outputs still to add.
pub fn run_demo_on_cpu() -> std::process::Command {
    let mut c = maskstream();
    c.args([
        "run",
        "--backend",
        "cpu",
        "--input",
        "assets/shapes-demo.mp4",
    ]);
    c
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn engine_dir() -> PathBuf {
    root().join("engines/shapes")
}

pub fn npy_f32(path: &Path) -> ArrayD<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn npy_i64(path: &Path) -> ArrayD<i64> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines written so far (0 while the file does not exist).
pub fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// (frame, pts_ns) of every line of a JSON Lines output.
pub fn jsonl_pts(path: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()));
            (v["frame"].as_u64().unwrap(), v["pts_ns"].as_u64().unwrap())
        })
        .collect()
}

/// Ends a child on drop, so a failed assertion never leaves a process behind: SIGTERM first (Xvfb
/// then removes its lock file and socket; maskstream finalizes its outputs), SIGKILL if it lingers.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn iou(a: &[f32], b: &[f32]) -> f32 {
    maskstream::model::boxes::iou(&[a[0], a[1], a[2], a[3]], &[b[0], b[1], b[2], b[3]])
}

/// IoU of two row-major 0/1 bitmaps of equal size.
pub fn mask_iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        inter += (x & y) as u64;
        union += (x | y) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// A pipeline of the bundled engine on the CPU backend with two threads, as CI runs it; no sources yet.
pub fn cpu_pipeline() -> maskstream::pipeline::config::PipelineConfig {
    maskstream::pipeline::config::PipelineConfig {
        engine: engine_dir(),
        backend: maskstream::BackendKind::Cpu,
        threads: 2,
        ..Default::default()
    }
}

/// The bundled model's FP32 graphs on the CPU backend with two threads, as CI runs it: the graphs
/// that reproduce torchvision.
pub fn cpu_model() -> maskstream::MaskRcnn {
    cpu_model_at(maskstream::Precision::Fp32)
}

pub fn cpu_model_at(precision: maskstream::Precision) -> maskstream::MaskRcnn {
    let opts = maskstream::BackendOptions {
        kind: maskstream::BackendKind::Cpu,
        threads: 2,
        precision,
        ..Default::default()
    };
    maskstream::MaskRcnn::load(engine_dir(), &opts).expect("load bundled engine")
}

pub mod gst_util {
    //! GStreamer helpers of the tests: decode a file, receive an RTSP stream.

    use std::time::{Duration, Instant};

    use gstreamer as gst;
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;

    pub struct Decoded {
        pub frames: Vec<Vec<u8>>,
        pub width: usize,
        pub height: usize,
        pub first_pts: Option<u64>,
        pub last_pts: Option<u64>,
    }

    fn rgb_sink() -> gst_app::AppSink {
        gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGB")
                    .build(),
            )
            .sync(false)
            .build()
    }

    fn pull_all(
        pipeline: &gst::Pipeline,
        sink: &gst_app::AppSink,
        want: usize,
        timeout: Duration,
        keep: bool,
    ) -> Result<Decoded, String> {
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("{e:?}"))?;
        let bus = pipeline.bus().unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Decoded {
            frames: Vec::new(),
            width: 0,
            height: 0,
            first_pts: None,
            last_pts: None,
        };
        let mut count = 0usize;
        let result = loop {
            if Instant::now() > deadline {
                break Err(format!("timed out after {count} frames"));
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                if let gst::MessageView::Error(e) = msg.view() {
                    break Err(format!("{} ({:?})", e.error(), e.debug()));
                }
            }
            match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                Some(s) => {
                    let caps = s.caps().unwrap();
                    let st = caps.structure(0).unwrap();
                    out.width = st.get::<i32>("width").unwrap() as usize;
                    out.height = st.get::<i32>("height").unwrap() as usize;
                    let b = s.buffer().unwrap();
                    out.last_pts = b.pts().map(|p| p.nseconds()).or(out.last_pts);
                    if out.first_pts.is_none() {
                        out.first_pts = out.last_pts;
                    }
                    if keep {
                        let m = b.map_readable().unwrap();
                        out.frames
                            .push(m.as_slice()[..out.width * out.height * 3].to_vec());
                    }
                    count += 1;
                    if count >= want {
                        break Ok(());
                    }
                }
                None if sink.is_eos() => break Ok(()),
                None => {}
            }
        };
        let _ = pipeline.set_state(gst::State::Null);
        if !keep {
            out.frames = vec![Vec::new(); count];
        }
        result.map(|_| out)
    }

    fn linked_pipeline(
        src: gst::Element,
        decode: gst::Element,
    ) -> (gst::Pipeline, gst_app::AppSink) {
        let pipeline = gst::Pipeline::new();
        let convert = gst::ElementFactory::make("videoconvert").build().unwrap();
        let sink = rgb_sink();
        pipeline
            .add_many([&src, &decode, &convert, sink.upcast_ref()])
            .unwrap();
        convert.link(&sink).unwrap();
        let dec = decode.clone();
        src.connect_pad_added(move |_, pad| {
            let _ = pad.link(&dec.static_pad("sink").unwrap());
        });
        if src.static_pad("src").is_some() {
            src.link(&decode).unwrap();
        }
        let conv = convert.clone();
        decode.connect_pad_added(move |_, pad| {
            let sinkpad = conv.static_pad("sink").unwrap();
            if !sinkpad.is_linked() {
                let _ = pad.link(&sinkpad);
            }
        });
        (pipeline, sink)
    }

    /// Decodes a whole video file (frame count, size, last pts; pixels when `keep`).
    pub fn decode_file(path: &std::path::Path, keep: bool) -> Result<Decoded, String> {
        gst::init().unwrap();
        let src = gst::ElementFactory::make("filesrc")
            .property("location", path.to_str().unwrap())
            .build()
            .unwrap();
        let decode = gst::ElementFactory::make("decodebin").build().unwrap();
        let (p, s) = linked_pipeline(src, decode);
        pull_all(&p, &s, usize::MAX, Duration::from_secs(120), keep)
    }

    /// Receives up to `want` decoded frames from an rtsps:// URL, trusting only the certificates in
    /// `ca` (PEM); the connection fails unless the server's certificate verifies against them.
    pub fn rtsps_frames(
        url: &str,
        ca: &std::path::Path,
        want: usize,
        timeout: Duration,
    ) -> Result<Decoded, String> {
        use gstreamer_rtsp_server::gio;
        gst::init().unwrap();
        let db = gio::TlsFileDatabase::new(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        let src = gst::ElementFactory::make("rtspsrc")
            .property("location", url)
            .property("latency", 0u32)
            .property("tls-database", db.upcast::<gio::TlsDatabase>())
            .build()
            .unwrap();
        let decode = gst::ElementFactory::make("decodebin").build().unwrap();
        let (p, s) = linked_pipeline(src, decode);
        pull_all(&p, &s, want, timeout, true)
    }

    /// Receives up to `want` decoded frames from an RTSP URL.
    pub fn rtsp_frames(
        url: &str,
        creds: Option<(&str, &str)>,
        want: usize,
        timeout: Duration,
    ) -> Result<Decoded, String> {
        gst::init().unwrap();
        let src = gst::ElementFactory::make("rtspsrc")
            .property("location", url)
            .property("latency", 0u32)
            .build()
            .unwrap();
        if let Some((u, p)) = creds {
            src.set_property("user-id", u);
            src.set_property("user-pw", p);
        }
        let decode = gst::ElementFactory::make("decodebin").build().unwrap();
        let (p, s) = linked_pipeline(src, decode);
        pull_all(&p, &s, want, timeout, true)
    }
}

/// Runs `cmd` to the end like `Command::output`, but a run that outlives `limit` is killed and the
/// test fails naming the command, instead of hanging the whole suite.
pub fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let out = rx.recv().ok().and_then(|o| o.ok());
            let err = out
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("{what}: still running after {limit:?}, killed; stderr: {err}");
        }
    }
}

/// `cmd.bounded()`: [`output_within`] with a limit no healthy run in the suite comes near.
pub trait Bounded {
    fn bounded(&mut self) -> std::process::Output;
}

impl Bounded for std::process::Command {
    fn bounded(&mut self) -> std::process::Output {
        output_within(self, std::time::Duration::from_secs(300))
    }
}

/// A CPU pipeline (as `cpu_pipeline`) reading `frames` frames of the demo video from each source
/// named, every detection >= 0.05 written to `out/{name}.jsonl`, one frame a model call.
pub fn demo_sources(
    names: &[&str],
    out: &Path,
    frames: u64,
) -> maskstream::pipeline::config::PipelineConfig {
    use maskstream::pipeline::config::SourceConfig;
    let mut cfg = cpu_pipeline();
    cfg.sources = names
        .iter()
        .map(|n| SourceConfig {
            uri: root().join("assets/shapes-demo.mp4").display().to_string(),
            name: Some(n.to_string()),
            max_frames: Some(frames),
            ..SourceConfig::new("")
        })
        .collect();
    cfg.inference.score_threshold = 0.05;
    cfg.inference.max_batch = Some(1);
    cfg.output.jsonl = Some(out.join("{name}.jsonl").display().to_string());
    cfg
}

/// Frame for frame the same instances, in the same order (`what` names the comparison).
pub fn same_records(
    a: &[maskstream::output::FrameRecord],
    b: &[maskstream::output::FrameRecord],
    what: &str,
) {
    assert_eq!(a.len(), b.len(), "{what}: line count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.frame, x.pts_ns), (y.frame, y.pts_ns), "{what}: order");
        assert_eq!(
            x.instances.len(),
            y.instances.len(),
            "{what}: frame {:?}: instance count",
            x.frame
        );
        for (i, j) in x.instances.iter().zip(&y.instances) {
            assert_eq!(i.class_id, j.class_id, "{what}: frame {:?}", x.frame);
            assert!(
                (i.score - j.score).abs() < 1e-4,
                "{what}: score {} vs {}",
                i.score,
                j.score
            );
            assert!(iou(&i.bbox, &j.bbox) > 0.999, "{what}: box");
            let (mi, mj) = (i.mask.decode().unwrap(), j.mask.decode().unwrap());
            assert!(mask_iou(&mi, &mj) > 0.99, "{what}: mask");
        }
    }
}
