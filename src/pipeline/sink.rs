//! Sinks fed with annotated frames (I420, see i420.rs): encoded video file (H.264 in MP4/MKV, input timestamps kept),
//! preview window, JSON Lines. Each video sink is its own GStreamer pipeline behind an appsrc, so encoding
//! runs on GStreamer's threads, overlapped with inference.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::config::OutputConfig;
use crate::error::{Error, Result};

/// A GStreamer element by factory name; a missing plugin is an error that says so.
pub(super) fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name).build().map_err(|_| {
        Error::Pipeline(format!(
            "GStreamer element {name} is missing (install the plugins)"
        ))
    })
}

/// appsrc → videoconvert → (encoder chain) → sink, as one GStreamer pipeline.
pub struct AppSrcPipeline {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    what: String,
    /// The file it writes: removed at the end if nothing was written to it (the encoder refused
    /// the first frame), so that a rerun is not stopped by an empty file "already there".
    file: Option<PathBuf>,
}

impl AppSrcPipeline {
    /// `nice`: how much nicer than inference its threads run (see priority.rs).
    fn new(
        what: String,
        caps: gst::Caps,
        live: bool,
        nice: u8,
        chain: Vec<gst::Element>,
    ) -> Result<Self> {
        let pipeline = gst::Pipeline::new();
        super::priority::lower(&pipeline, nice);
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(live)
            .block(!live)
            .max_bytes(caps_frame_bytes(&caps) * 4)
            .build();
        if live {
            // a window that lags (or is covered) must not queue frames without bound: drop the oldest
            src.set_property_from_str("leaky-type", "downstream");
        }
        let convert = make("videoconvert")?;
        let mut all: Vec<&gst::Element> = vec![src.upcast_ref(), &convert];
        all.extend(chain.iter());
        pipeline
            .add_many(all.iter().copied())
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        gst::Element::link_many(all.iter().copied())
            .map_err(|e| Error::Pipeline(format!("{what}: cannot link elements: {e}")))?;
        if pipeline.set_state(gst::State::Playing).is_err() {
            // the element that failed said why on the bus (a file that cannot be opened ...)
            let why = bus_error(&pipeline).map_or(String::new(), |e| format!(": {e}"));
            let _ = pipeline.set_state(gst::State::Null);
            return Err(Error::Pipeline(format!("{what}: cannot start{why}")));
        }
        Ok(AppSrcPipeline {
            pipeline,
            src,
            what,
            file: None,
        })
    }

    pub fn push(&self, buffer: gst::Buffer) -> Result<()> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        self.src
            .push_buffer(buffer)
            .map(|_| ())
            .map_err(|e| Error::Pipeline(format!("{}: {e:?}", self.what)))
    }

    fn error(&self) -> Option<Error> {
        bus_error(&self.pipeline).map(|e| Error::Pipeline(format!("{}: {e}", self.what)))
    }

    /// Sends EOS and waits until the muxer has written everything (the MP4 index), then stops.
    pub fn finish(self, timeout: Duration) -> Result<()> {
        let _ = self.src.end_of_stream();
        let result = match self.pipeline.bus() {
            Some(bus) => match bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(timeout.as_millis() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            ) {
                Some(msg) => match msg.view() {
                    gst::MessageView::Error(e) => {
                        Err(Error::Pipeline(format!("{}: {}", self.what, e.error())))
                    }
                    _ => Ok(()),
                },
                None => Err(Error::Pipeline(format!(
                    "{}: timed out finishing",
                    self.what
                ))),
            },
            None => Ok(()),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        if let Some(f) = &self.file {
            if std::fs::metadata(f).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(f);
            }
        }
        result
    }
}

/// The first error a pipeline posted, as its element said it.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let msg = pipeline.bus()?.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        _ => None,
    }
}

fn caps_frame_bytes(caps: &gst::Caps) -> u64 {
    gstreamer_video::VideoInfo::from_caps(caps).map_or(1 << 20, |i| i.size() as u64)
}

/// H.264 (x264, I420 — the profile every decoder plays) in MP4 or Matroska. `live`: the frames come
/// from a live source, which drops frames when inference lags (see below). Bitrate, x264 preset and
/// threads and fragment length come from `[output]`; `nice`: how much nicer than inference encoding
/// runs; `inference_on_cpu`: the defaults of `x264_preset` and `x264_threads` (see there).
pub fn video_file(
    path: &Path,
    (width, height): (usize, usize),
    fps: (i32, i32),
    live: bool,
    o: &OutputConfig,
    (nice, inference_on_cpu): (u8, bool),
) -> Result<AppSrcPipeline> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io_op(dir, "create the folder", e))?;
    }
    let i420 = make("capsfilter")?;
    i420.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .build(),
    );
    let enc = make("x264enc")?;
    let preset = o.preset_for(inference_on_cpu);
    enc.set_property_from_str("speed-preset", preset.name());
    let threads = o
        .x264_threads
        .unwrap_or(if inference_on_cpu { 1 } else { 0 });
    enc.set_property("threads", threads);
    // Live recordings are fragmented: their frames exist nowhere else. A file's output is redone
    // from its input after a crash, and a classic MP4 keeps B-frames and the input's exact
    // timestamps (mp4mux's fragments start the timeline at 0, dropping the B-frame delay).
    let fragment_ms = if live { o.fragment_ms } else { 0 };
    let fragmented = fragment_ms > 0 && !lower_ext(path).ends_with(".mkv");
    if live {
        // A live recording must lose as little as possible when the process dies: x264 holds no
        // frame back (no look-ahead, no B-frames, no frame threads), so what was handed over is in
        // the file's next fragment.
        enc.set_property_from_str("tune", "zerolatency");
    }
    if live || fragmented {
        // mp4mux's fragments lose the frames that B-frames reorder past a fragment's end (4 of 6
        // frames of a short clip played back); and live sources drop frames, so their timestamps
        // have gaps: with B-frames the muxer's timeline (built from x264's DTS, which follow the
        // frame count, not the gaps) can end before the last frame, and players skip that frame.
        // Without B-frames decode order is presentation order and every timestamp is kept as it came.
        // (Classic MP4 and MKV of files keep B-frames.)
        enc.set_property("bframes", 0u32);
    } else if preset == super::config::X264Preset::Ultrafast {
        // ultrafast has none, and without them mp4mux starts a single stream's timeline at its
        // first frame: the demo's output ended 2 frames (its input's B-frame delay) before the
        // input. Three, as superfast has, keep every timestamp; they cost no CPU here and give
        // ultrafast +0.5 dB Y PSNR at the same bitrate (demo).
        enc.set_property("bframes", 3u32);
    }
    let bitrate = o
        .bitrate_kbps
        .unwrap_or_else(|| super::config::default_bitrate_kbps((width, height), preset));
    enc.set_property("bitrate", bitrate);
    let parse = make("h264parse")?;
    let lower = lower_ext(path);
    let mux = if lower.ends_with(".mkv") {
        // Matroska is written front to back: a killed run leaves a file that plays to its last cluster
        make("matroskamux")?
    } else {
        let mux = make("mp4mux")?;
        if fragment_ms > 0 {
            // a classic MP4 writes its index (moov) at the end, so a killed run leaves nothing playable;
            // fragments (moof+mdat) each carry their own index: all but the last one survive a kill
            mux.set_property("fragment-duration", fragment_ms);
        }
        mux
    };
    let sink = make("filesink")?;
    sink.set_property("location", path.to_string_lossy().as_ref());
    // filesink's stdio buffer (64 KiB) dies with the process: at a few frames/s that is several
    // fragments. Unbuffered, each fragment is in the kernel's page cache once written.
    sink.set_property_from_str("buffer-mode", "unbuffered");
    let mut out = AppSrcPipeline::new(
        format!("video output {}", path.display()),
        super::i420::caps(width, height, fps),
        false,
        nice,
        vec![i420, enc, parse, mux, sink],
    )?;
    out.file = Some(path.to_path_buf());
    Ok(out)
}

fn lower_ext(path: &Path) -> String {
    path.to_string_lossy().to_ascii_lowercase()
}

/// A window showing the annotated stream.
pub fn preview(name: &str, width: usize, height: usize, fps: (i32, i32)) -> Result<AppSrcPipeline> {
    let sink = window_sink()?;
    sink.set_property("sync", false);
    AppSrcPipeline::new(
        format!("preview {name}"),
        super::i420::caps(width, height, fps),
        true,
        0,
        vec![sink],
    )
}

/// A sink that opens a window. Not autovideosink: with no display it falls through to DirectFB's
/// sink, whose thread crashes the whole process; here each window sink must open its display
/// (NULL -> READY) or the next is tried, and none is an error that says what to check.
fn window_sink() -> Result<gst::Element> {
    const CANDIDATES: [&str; 4] = ["xvimagesink", "ximagesink", "waylandsink", "glimagesink"];
    let mut tried = Vec::new();
    for name in CANDIDATES {
        // libwayland complains on stderr when it has no display to look for
        if name == "waylandsink" && std::env::var_os("WAYLAND_DISPLAY").is_none() {
            continue;
        }
        let Ok(el) = gst::ElementFactory::make(name).build() else {
            continue;
        };
        if el.set_state(gst::State::Ready).is_ok() {
            return Ok(el);
        }
        let _ = el.set_state(gst::State::Null);
        tried.push(name);
    }
    Err(Error::Pipeline(format!(
        "preview: no window could be opened (tried {}): is DISPLAY (X11) or WAYLAND_DISPLAY set to a running display?",
        if tried.is_empty() { "no window sink is installed".to_string() } else { tried.join(", ") }
    )))
}

/// JSON Lines: each record is written with one write call, so a reader (or a crash) only ever sees
/// whole lines.
pub struct JsonlSink {
    file: std::fs::File,
    path: PathBuf,
    line: Vec<u8>,
}

impl JsonlSink {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io_op(dir, "create the folder", e))?;
        }
        let file = std::fs::File::create(path).map_err(|e| Error::io_op(path, "create", e))?;
        Ok(JsonlSink {
            file,
            path: path.to_path_buf(),
            line: Vec::with_capacity(4096),
        })
    }

    /// One record (a frame, an event) as one line, handed to the OS at once (the file is unbuffered).
    pub fn write<T: serde::Serialize>(&mut self, record: &T) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        self.line.push(b'\n');
        self.file
            .write_all(&self.line)
            .map_err(|e| Error::io_op(&self.path, "write", e))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::super::priority::thread_nice;
    use super::*;
    use std::sync::{Arc, Mutex};

    fn encoder(out: &AppSrcPipeline) -> gst::Element {
        out.pipeline
            .iterate_elements()
            .into_iter()
            .flatten()
            .find(|e| e.factory().is_some_and(|f| f.name() == "x264enc"))
            .unwrap()
    }

    /// The encoder's threads, preset and bitrate: `[output] x264_threads`, `x264_preset` and
    /// `bitrate_kbps`, else 1 thread, ultrafast and 1.2x the size's bitrate beside CPU inference,
    /// x264's own choice (0), superfast and the size's bitrate beside a GPU.
    #[test]
    fn x264_settings_follow_the_config_or_where_inference_runs() {
        gst::init().unwrap();
        let dir = std::env::temp_dir().join(format!("ms-sink-threads-{}", std::process::id()));
        let settings = |o: &OutputConfig, on_cpu: bool| {
            let out = video_file(
                &dir.join("t.mp4"),
                (640, 360),
                (10, 1),
                false,
                o,
                (0, on_cpu),
            )
            .unwrap();
            let enc = encoder(&out);
            let preset = enc.property_value("speed-preset");
            let preset =
                gst::glib::EnumValue::from_value(&preset).map(|(_, v)| v.nick().to_string());
            (
                enc.property::<u32>("threads"),
                preset.unwrap(),
                enc.property::<u32>("bitrate"),
            )
        };
        let set = OutputConfig {
            x264_threads: Some(3),
            x264_preset: Some(crate::pipeline::config::X264Preset::Medium),
            bitrate_kbps: Some(700),
            ..OutputConfig::default()
        };
        let unset = OutputConfig::default();
        assert_eq!(settings(&unset, true), (1, "ultrafast".into(), 1202));
        assert_eq!(settings(&unset, false), (0, "superfast".into(), 1001));
        assert_eq!(settings(&set, true), (3, "medium".into(), 700));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn video_files_are_encoded_on_threads_nicer_than_the_callers() {
        gst::init().unwrap();
        let dir = std::env::temp_dir().join(format!("ms-sink-nice-{}", std::process::id()));
        let path = dir.join("out.mp4");
        let out = video_file(
            &path,
            (64, 48),
            (10, 1),
            false,
            &OutputConfig::default(),
            (6, true),
        )
        .unwrap();
        let info =
            gstreamer_video::VideoInfo::from_caps(&super::super::i420::caps(64, 48, (10, 1)))
                .unwrap();
        // x264's output leaves it on the thread that encoded the frame
        let seen = Arc::new(Mutex::new(Vec::new()));
        let enc = encoder(&out);
        // inference on the CPU: one encoding thread unless [output] x264_threads says otherwise
        assert_eq!(enc.property::<u32>("threads"), 1);
        let s = seen.clone();
        enc.static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                s.lock().unwrap().push(thread_nice());
                gst::PadProbeReturn::Ok
            });
        for i in 0..5u64 {
            let rgb = vec![(i * 40) as u8; 64 * 48 * 3];
            let pts = Some(i * 100_000_000);
            out.push(
                super::super::i420::to_buffer(&rgb, (64, 48), &info, pts, Some(100_000_000))
                    .unwrap(),
            )
            .unwrap();
        }
        out.finish(Duration::from_secs(10)).unwrap();
        let seen = seen.lock().unwrap().clone();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!seen.is_empty());
        let expected = (thread_nice() + 6).min(19);
        assert!(
            seen.iter().all(|&n| n == expected),
            "{seen:?}, expected {expected}"
        );
    }
    #[test]
    fn a_video_file_the_encoder_refused_is_not_left_empty() {
        gst::init().unwrap();
        let dir = std::env::temp_dir().join(format!("ms-sink-refused-{}", std::process::id()));
        let path = dir.join("out.mp4");
        // x264 takes no odd size in 4:2:0 (the composite stage never asks it to: i420::even_size)
        let (w, h) = (65, 49);
        let out = video_file(
            &path,
            (w, h),
            (10, 1),
            false,
            &OutputConfig::default(),
            (0, true),
        )
        .unwrap();
        assert!(path.exists());
        let info = gstreamer_video::VideoInfo::from_caps(&super::super::i420::caps(w, h, (10, 1)))
            .unwrap();
        let rgb = vec![90u8; w * h * 3];
        let mut refused = false;
        for i in 0..5u64 {
            let buffer = super::super::i420::to_buffer(&rgb, (w, h), &info, Some(i), None).unwrap();
            refused |= out.push(buffer).is_err();
            std::thread::sleep(Duration::from_millis(20));
        }
        let finished = out.finish(Duration::from_secs(10));
        assert!(refused || finished.is_err());
        assert!(!path.exists(), "an empty {} is left", path.display());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_video_file_that_cannot_be_opened_says_why() {
        gst::init().unwrap();
        let err = video_file(
            Path::new("/proc/maskstream-test.mp4"),
            (64, 48),
            (10, 1),
            false,
            &OutputConfig::default(),
            (0, true),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("cannot start: Could not open"), "{err}");
    }
}
