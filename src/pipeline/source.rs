//! Sources: GStreamer decodes files, URIs, RTSP cameras, V4L2 devices and test patterns into RGB frames
//! (uridecodebin / videotestsrc → videoconvert → appsink), one thread per source. Files push back
//! (nothing dropped); live sources drop their oldest queued frame when inference lags, and count it.
//! RTSP sources reconnect with back-off when the stream drops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::VideoFrameExt;

use super::config::{RtspInputConfig, SourceConfig, SourceKind};
use super::rtsp::Credentials;
use super::sink::make;
use super::timeline::Timeline;
use crate::error::{Error, Result};

/// One decoded frame, packed RGB8 (stride = 3 * width).
#[derive(Debug)]
pub struct Frame {
    pub source: usize,
    pub index: u64,
    pub pts_ns: Option<u64>,
    pub duration_ns: Option<u64>,
    pub width: usize,
    pub height: usize,
    /// Frame rate of the stream (numerator, denominator); (0, 1) when unknown.
    pub fps: (i32, i32),
    pub data: Vec<u8>,
    pub decoded_at: Instant,
    /// Wall-clock time of capture: the sender's NTP clock when the stream carries it (RTCP), else the
    /// arrival time; for files, the run's start plus the frame's position in the file.
    pub ts: SystemTime,
}

/// What a source thread sends downstream.
#[derive(Debug)]
pub enum SourceEvent {
    Frame(Frame),
    /// The stream ended (EOS) or failed; nothing follows.
    End {
        source: usize,
        error: Option<String>,
    },
}

/// Counters a source keeps while running.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub decoded: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    /// Estimated total frames of a file (0 = unknown / live).
    pub expected: AtomicU64,
    /// Frames waiting for inference, as of the last one queued.
    pub queued: AtomicU64,
}

pub struct SourceHandle {
    pub rx: Receiver<SourceEvent>,
    pub stats: Arc<SourceStats>,
    pub thread: std::thread::JoinHandle<()>,
    /// Ends this source alone (removed at run time); it then ends as if its input had.
    pub cancel: Arc<AtomicBool>,
}

/// What a source thread is started with.
pub struct SourceSpec {
    pub id: usize,
    pub name: String,
    pub kind: SourceKind,
    pub max_frames: Option<u64>,
    /// Largest frame handed on; larger input is scaled down in GStreamer, aspect kept.
    pub max_size: (u32, u32),
    /// Frames queued towards inference.
    pub capacity: usize,
    /// How much nicer than inference a file's decoding runs (live sources keep their priority).
    pub background_nice: u8,
    pub rtsp: RtspInputConfig,
    /// For the camera (rtspsrc / souphttpsrc user-id and user-pw).
    pub credentials: Option<Credentials>,
}

impl SourceSpec {
    pub fn new(id: usize, name: String, kind: SourceKind, cfg: &SourceConfig) -> Self {
        SourceSpec {
            id,
            name,
            kind,
            max_frames: cfg.max_frames,
            max_size: (cfg.max_width, cfg.max_height),
            capacity: 2,
            background_nice: 0,
            rtsp: RtspInputConfig::default(),
            credentials: None,
        }
    }
}

/// Starts the source thread. Frames go into a bounded queue of `spec.capacity`.
pub fn spawn(spec: SourceSpec, stop: Arc<AtomicBool>) -> Result<SourceHandle> {
    let cancel = Arc::new(AtomicBool::new(false));
    if let SourceKind::File(p) = &spec.kind {
        check_file(p)?;
    }
    let (tx, rx) = crossbeam_channel::bounded(spec.capacity);
    let stats = Arc::new(SourceStats::default());
    let name = spec.name.clone();
    let ctx = SourceCtx {
        spec,
        tx,
        drain: rx.clone(),
        stats: stats.clone(),
        stop,
        cancel: cancel.clone(),
        oversize: Arc::new(Mutex::new(None)),
    };
    let thread = std::thread::Builder::new()
        .name(format!("source-{name}"))
        .spawn(move || ctx.run())
        .map_err(|e| Error::Pipeline(format!("starting source thread: {e}")))?;
    Ok(SourceHandle {
        rx,
        stats,
        thread,
        cancel,
    })
}

/// A clear error for files that cannot be read, before GStreamer is involved.
pub fn check_file(p: &std::path::Path) -> Result<()> {
    // one message naming the file and the reason (Error::Io would repeat the reason in its chain)
    let cannot = |e: std::io::Error| Error::Input(format!("{}: cannot open: {e}", p.display()));
    let meta = std::fs::metadata(p).map_err(cannot)?;
    if meta.is_dir() {
        return Err(Error::Input(format!(
            "{}: is a directory, not a video file",
            p.display()
        )));
    }
    if meta.len() == 0 {
        return Err(Error::Input(format!(
            "{}: file is empty (0 bytes)",
            p.display()
        )));
    }
    std::fs::File::open(p).map_err(cannot)?;
    Ok(())
}

/// How long an error swallowed inside a bin waits before it is reported: the bus gets its chance
/// first, and decodebin its chance to remove a failed candidate.
const LOST_ERROR_GRACE: Duration = Duration::from_millis(500);

/// The outcome of an error posted in the decoding pipeline, whether the bus or the tracer
/// (witness.rs) delivered it: a missing decoder, once reported, is the reason that matters.
fn failed(message: &str, debug: &str, index: u64, missing_decoder: &Option<String>) -> Outcome {
    Outcome::Failed(match missing_decoder {
        Some(codec) => format!("no decoder installed for this codec ({codec})"),
        None => describe_error(message, debug, index),
    })
}

struct SourceCtx {
    spec: SourceSpec,
    tx: Sender<SourceEvent>,
    /// Our own receiver end, used to drop the oldest frame of a live source.
    drain: Receiver<SourceEvent>,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
    /// Set when the decoder announces a frame size no camera or file has (a corrupt or hostile
    /// stream): the source fails instead of allocating it.
    oversize: Arc<Mutex<Option<String>>>,
}

enum Outcome {
    Eos,
    /// max_frames reached.
    Done,
    Stopped,
    Failed(String),
}

/// What `pump` keeps across frames of one session.
struct PumpState {
    /// The frame index the session started at.
    first: u64,
    live: bool,
    last_frame_at: Instant,
    queried_duration: bool,
    declared_ns: Option<u64>,
    decoded_end_ns: Option<u64>,
    missing_decoder: Option<String>,
    /// The appsink takes only the size of the source's first frame.
    size_pinned: bool,
}

impl PumpState {
    /// The end of a file: complete, or shorter than its container says (truncated, damaged).
    fn at_eos(&self, index: u64) -> Outcome {
        if index == self.first {
            return Outcome::Failed(match &self.missing_decoder {
                Some(codec) => format!("no decoder installed for this codec ({codec})"),
                None if index == 0 => "no video stream in this input".to_string(),
                None => "the stream ended without a frame".to_string(),
            });
        }
        if !self.live {
            if let Some(why) = ends_early(self.declared_ns, self.decoded_end_ns) {
                return Outcome::Failed(format!("{why} (after {index} frames)"));
            }
        }
        Outcome::Eos
    }
}

/// Handles the errors, EOS and missing-plugin messages waiting on the bus; `Some` ends the session.
fn read_bus(
    bus: &gst::Bus,
    sink: &gst_app::AppSink,
    index: u64,
    st: &mut PumpState,
) -> Option<Outcome> {
    while let Some(msg) = bus.pop_filtered(&[
        gst::MessageType::Error,
        gst::MessageType::Eos,
        gst::MessageType::Element,
    ]) {
        match msg.view() {
            gst::MessageView::Error(e) => {
                let detail = e.debug().map(|d| d.to_string()).unwrap_or_default();
                return Some(failed(
                    &e.error().to_string(),
                    &detail,
                    index,
                    &st.missing_decoder,
                ));
            }
            gst::MessageView::Eos(_) if sink.is_eos() || index == st.first => {
                return Some(st.at_eos(index));
            }
            gst::MessageView::Element(m) => {
                if let Some(codec) = m.structure().and_then(missing_plugin) {
                    tracing::warn!(%codec, "no decoder installed");
                    st.missing_decoder.get_or_insert(codec);
                }
            }
            _ => {}
        }
    }
    None
}

/// No frame within the poll interval: EOS, an error a bin swallowed, or a stall end the session.
fn no_sample(
    pipeline: &gst::Pipeline,
    sink: &gst_app::AppSink,
    index: u64,
    st: &PumpState,
    stall: Option<Duration>,
) -> Option<Outcome> {
    if sink.is_eos() {
        return Some(st.at_eos(index));
    }
    // an error a bin swallowed (see witness.rs): the bus will never say it
    if let Some((message, debug)) = super::witness::lost_error(pipeline, LOST_ERROR_GRACE) {
        tracing::debug!(%message, "error swallowed inside decodebin, seen by the tracer");
        return Some(failed(&message, &debug, index, &st.missing_decoder));
    }
    if let Some(limit) = stall {
        if st.last_frame_at.elapsed() >= limit {
            return Some(Outcome::Failed(format!(
                "no frame for {} ms: the stream stalled",
                limit.as_millis()
            )));
        }
    }
    None
}

/// The `videotestsrc` front of a test-pattern source, linked to `scale`.
fn build_test_source(
    pipeline: &gst::Pipeline,
    scale: &gst::Element,
    pattern: &str,
    (width, height, fps): (u32, u32, u32),
    frames: Option<u64>,
) -> Result<()> {
    let src = make("videotestsrc")?;
    src.set_property("is-live", true);
    src.set_property_from_str("pattern", pattern);
    if let Some(n) = frames {
        src.set_property("num-buffers", i32::try_from(n).unwrap_or(i32::MAX));
    }
    let filter = make("capsfilter")?;
    filter.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("width", width as i32)
            .field("height", height as i32)
            .field("framerate", gst::Fraction::new(fps as i32, 1))
            .build(),
    );
    pipeline
        .add_many([&src, &filter])
        .map_err(|e| Error::Pipeline(e.to_string()))?;
    gst::Element::link_many([&src, &filter, scale]).map_err(|e| Error::Pipeline(e.to_string()))?;
    Ok(())
}

impl SourceCtx {
    /// The run stops, or this source was removed.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }

    fn run(self) {
        let _span = tracing::info_span!("source", name = %self.spec.name).entered();
        let mut index = 0u64;
        let mut attempt = 0u32;
        let mut timeline = Timeline::new(self.spec.kind.is_live());
        let error = loop {
            let before = index;
            timeline.new_session();
            // after a reconnect the stream may come back at another size: the outputs keep the first
            let fixed = timeline.size();
            let outcome = match self.build(fixed) {
                Ok((pipeline, sink)) => {
                    let o = self.pump(&pipeline, &sink, &mut index, &mut timeline);
                    let _ = pipeline.set_state(gst::State::Null);
                    super::witness::unwatch(&pipeline);
                    o
                }
                Err(e) => Outcome::Failed(e.to_string()),
            };
            let retry = self.spec.kind.is_network() && !self.stopped();
            match outcome {
                Outcome::Stopped | Outcome::Done => break None,
                Outcome::Eos if !retry => break None,
                Outcome::Failed(e) if !retry => break Some(e),
                Outcome::Eos | Outcome::Failed(_) => {
                    let why = match &outcome {
                        Outcome::Failed(e) => e.as_str(),
                        _ => "end of stream",
                    };
                    if index > before {
                        attempt = 0; // the stream ran: start the back-off afresh
                    }
                    if attempt >= self.spec.rtsp.reconnect_attempts {
                        break Some(format!(
                            "stream lost; gave up after {} reconnect attempts (last: {why})",
                            self.spec.rtsp.reconnect_attempts
                        ));
                    }
                    // the interval is validated (<= 10 min), so 8x of it cannot overflow
                    let wait = Duration::from_millis(
                        self.spec.rtsp.reconnect_interval_ms << attempt.min(3),
                    );
                    attempt += 1;
                    tracing::warn!(
                        attempt,
                        of = self.spec.rtsp.reconnect_attempts,
                        wait_ms = wait.as_millis() as u64,
                        reason = why,
                        "stream dropped, reconnecting"
                    );
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    while started.elapsed() < wait && !self.stopped() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        };
        if let Some(e) = &error {
            tracing::error!(error = %e, "source failed");
        }
        // the End goes to the inference thread, or nowhere once it and the run's handle are gone:
        // our own `drain` receiver must not keep the queue open, or a full queue would block here
        let (tx, id) = (self.tx.clone(), self.spec.id);
        drop(self);
        let _ = tx.send(SourceEvent::End { source: id, error });
    }

    fn build(&self, fixed: Option<(usize, usize)>) -> Result<(gst::Pipeline, gst_app::AppSink)> {
        let pipeline = gst::Pipeline::new();
        if !self.spec.kind.is_live() {
            // a file waits in the queue when inference is behind: it can decode in idle moments
            super::priority::lower(&pipeline, self.spec.background_nice);
        }
        // scale before converting: cheaper on the smaller frame, and memory per frame is bounded
        let scale = make("videoscale")?;
        let convert = make("videoconvert")?;
        let caps = output_caps(self.spec.max_size, fixed);
        let sink = gst_app::AppSink::builder()
            .caps(&caps)
            .max_buffers(2)
            .drop(false)
            .sync(false)
            .build();
        pipeline
            .add_many([&scale, &convert, sink.upcast_ref()])
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        gst::Element::link_many([&scale, &convert, sink.upcast_ref()])
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        match &self.spec.kind {
            SourceKind::Test {
                pattern,
                width,
                height,
                fps,
                frames,
            } => build_test_source(&pipeline, &scale, pattern, (*width, *height, *fps), *frames)?,
            kind => self.build_uri_source(&pipeline, &scale, kind)?,
        }
        super::witness::watch(&pipeline);
        pipeline.set_state(gst::State::Playing).map_err(|_| {
            Error::Pipeline("cannot start decoding (see the error that follows)".into())
        })?;
        Ok((pipeline, sink))
    }

    /// The `uridecodebin` front of a file, V4L2, URI or RTSP source, linked to `scale` when its
    /// video pad appears.
    fn build_uri_source(
        &self,
        pipeline: &gst::Pipeline,
        scale: &gst::Element,
        kind: &SourceKind,
    ) -> Result<()> {
        let uri = match kind {
            SourceKind::File(p) => {
                let abs = std::fs::canonicalize(p).map_err(|e| Error::io(p, e))?;
                gst::glib::filename_to_uri(&abs, None)
                    .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?
                    .to_string()
            }
            SourceKind::V4l2(dev) => format!("v4l2://{dev}"),
            SourceKind::Uri(u) | SourceKind::Rtsp(u) => u.clone(),
            SourceKind::Test { .. } => unreachable!("handled above"),
        };
        let decode = make("uridecodebin")?;
        decode.set_property("uri", &uri);
        let rtsp = self.spec.rtsp.clone();
        let creds = self.spec.credentials.clone();
        decode.connect("source-setup", false, move |args| {
            if let Some(src) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
                configure_network_source(&src, &rtsp, creds.as_ref());
            }
            None
        });
        let scale_weak = scale.downgrade();
        let oversize = self.oversize.clone();
        decode.connect_pad_added(move |_, pad| {
            let Some(scale) = scale_weak.upgrade() else {
                return;
            };
            let caps = pad.current_caps();
            let Some(st) = caps.as_ref().and_then(|c| c.structure(0)) else {
                return;
            };
            if !st.name().starts_with("video/") {
                return;
            }
            if let Some(why) = absurd_size(st) {
                if let Ok(mut o) = oversize.lock() {
                    o.get_or_insert(why);
                }
                return;
            }
            if let Some(sinkpad) = scale.static_pad("sink") {
                if !sinkpad.is_linked() {
                    let _ = pad.link(&sinkpad);
                }
            }
        });
        pipeline
            .add(&decode)
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        Ok(())
    }

    /// Pulls frames until EOS, an error or stop.
    fn pump(
        &self,
        pipeline: &gst::Pipeline,
        sink: &gst_app::AppSink,
        index: &mut u64,
        timeline: &mut Timeline,
    ) -> Outcome {
        let Some(bus) = pipeline.bus() else {
            return Outcome::Failed("pipeline has no bus".into());
        };
        let live = self.spec.kind.is_live();
        // a stream that neither sends frames nor ends (frozen camera, half-open connection)
        let stall = match self.spec.rtsp.stall_timeout_ms {
            ms if ms > 0 && self.spec.kind.is_network() => Some(Duration::from_millis(ms)),
            _ => None,
        };
        let mut st = PumpState {
            first: *index,
            live,
            last_frame_at: Instant::now(),
            queried_duration: false,
            declared_ns: None,
            decoded_end_ns: None,
            missing_decoder: None,
            size_pinned: timeline.size().is_some(),
        };
        loop {
            if self.stopped() {
                return Outcome::Stopped;
            }
            if self.spec.max_frames.is_some_and(|m| *index >= m) {
                return Outcome::Done;
            }
            if let Some(why) = self.oversize.lock().ok().and_then(|mut o| o.take()) {
                return Outcome::Failed(why);
            }
            if let Some(outcome) = read_bus(&bus, sink, *index, &mut st) {
                return outcome;
            }
            let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(50)) else {
                if let Some(outcome) = no_sample(pipeline, sink, *index, &st, stall) {
                    return outcome;
                }
                continue;
            };
            st.last_frame_at = Instant::now();
            let Some(frame) = self.to_frame(&sample, *index, timeline) else {
                continue;
            };
            if !st.size_pinned {
                // the outputs are opened at the first frame's size: a stream that changes size
                // later (new SPS, HLS variant, concatenated recordings) is scaled to it, letterboxed
                st.size_pinned = true;
                let size = (frame.width, frame.height);
                sink.set_caps(Some(&output_caps(self.spec.max_size, Some(size))));
            }
            self.note_frame(pipeline, &frame, &mut st);
            *index += 1;
            self.stats.decoded.fetch_add(1, Ordering::Relaxed);
            if !self.send(frame, live) {
                return Outcome::Stopped;
            }
        }
    }

    /// The declared duration (asked once, for files) and the end of the frames decoded so far.
    fn note_frame(&self, pipeline: &gst::Pipeline, frame: &Frame, st: &mut PumpState) {
        if !st.queried_duration && !st.live {
            st.queried_duration = true;
            if let Some(d) = pipeline.query_duration::<gst::ClockTime>() {
                st.declared_ns = Some(d.nseconds());
                let (n, dn) = frame.fps;
                if n > 0 && dn > 0 {
                    let frames = d.nseconds() as f64 * n as f64 / dn as f64 / 1e9;
                    self.stats
                        .expected
                        .store(frames.round() as u64, Ordering::Relaxed);
                }
            }
        }
        if let Some(pts) = frame.pts_ns {
            let end = pts.saturating_add(frame.duration_ns.unwrap_or(0));
            st.decoded_end_ns = Some(st.decoded_end_ns.map_or(end, |e| e.max(end)));
        }
    }

    /// Notes the queue's depth for the metrics; true (sent).
    fn queued(&self) -> bool {
        self.stats
            .queued
            .store(self.tx.len() as u64, Ordering::Relaxed);
        true
    }

    /// Files block (back-pressure); live sources replace their oldest queued frame.
    fn send(&self, frame: Frame, live: bool) -> bool {
        let mut ev = SourceEvent::Frame(frame);
        if !live {
            // block, but keep checking stop so that shutdown never hangs on a full queue
            loop {
                match self.tx.send_timeout(ev, Duration::from_millis(100)) {
                    Ok(()) => return self.queued(),
                    Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                        if self.stopped() {
                            return false;
                        }
                        ev = back;
                    }
                    Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
                }
            }
        }
        loop {
            match self.tx.try_send(ev) {
                Ok(()) => return self.queued(),
                Err(TrySendError::Full(back)) => {
                    if self.drain.try_recv().is_ok() {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    ev = back;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    fn to_frame(&self, sample: &gst::Sample, index: u64, timeline: &mut Timeline) -> Option<Frame> {
        let caps = sample.caps()?;
        let info = gst_video::VideoInfo::from_caps(caps).ok()?;
        let buffer = sample.buffer()?;
        let (w, h) = (info.width() as usize, info.height() as usize);
        if let Some((fw, fh)) = timeline.size().filter(|&s| s != (w, h)) {
            // the few frames decoded before the appsink's pinned size took effect
            tracing::warn!(source = %self.spec.name, "frame {index} skipped: {w}x{h}, not the stream's {fw}x{fh}");
            return None;
        }
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
        let data = match info.format() {
            gst_video::VideoFormat::I420 => match super::i420::to_rgb(&frame) {
                Ok(rgb) => rgb,
                Err(e) => {
                    tracing::warn!(source = %self.spec.name, "frame {index} skipped: {e}");
                    return None;
                }
            },
            _ => {
                // RGB (the caps allow nothing else): rows copied without the decoder's padding
                let (map, stride) = (
                    frame.plane_data(0).ok()?,
                    *frame.plane_stride().first()? as usize,
                );
                let row = w * 3;
                if stride < row || map.len() < stride * (h.saturating_sub(1)) + row {
                    return None;
                }
                let mut data = Vec::with_capacity(row * h);
                for y in 0..h {
                    data.extend_from_slice(&map[y * stride..y * stride + row]);
                }
                data
            }
        };
        let fps = info.fps();
        let now = Instant::now();
        let duration_ns = buffer.duration().map(|t| t.nseconds());
        let stamp = timeline.map(
            buffer.pts().map(|t| t.nseconds()),
            duration_ns,
            sender_clock(buffer),
            (w, h),
            now,
        );
        Some(Frame {
            source: self.spec.id,
            index,
            pts_ns: stamp.pts_ns,
            duration_ns,
            width: w,
            height: h,
            fps: (fps.numer(), fps.denom()),
            data,
            decoded_at: now,
            ts: stamp.ts,
        })
    }
}

/// RGB frames no larger than `max` (aspect kept, square pixels), or exactly `fixed` (letterboxed) once
/// the first session of a source set the outputs' size.
fn output_caps(max: (u32, u32), fixed: Option<(usize, usize)>) -> gst::Caps {
    // I420 from YUV decoders (turned into RGB by i420.rs, faster than videoconvert), RGB from RGB
    // sources (images, screen captures) without a detour through 4:2:0: videoconvert picks whichever
    // loses least from what it is given
    let b = gst::Caps::builder("video/x-raw")
        .field("format", gst::List::new(["I420", "RGB"]))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    match fixed {
        Some((w, h)) => b.field("width", w as i32).field("height", h as i32),
        None => b
            .field("width", gst::IntRange::new(16, max.0 as i32))
            .field("height", gst::IntRange::new(16, max.1 as i32)),
    }
    .build()
}

/// A decoded size no real stream has: refused before a frame of it is allocated.
fn absurd_size(s: &gst::StructureRef) -> Option<String> {
    let w = s.get::<i32>("width").ok()?;
    let h = s.get::<i32>("height").ok()?;
    let limit = SourceConfig::MAX_SIDE as i32;
    (w > limit || h > limit || w <= 0 || h <= 0).then(|| {
        format!("the stream declares frames of {w}x{h} pixels, beyond {limit}x{limit}: refusing it")
    })
}

/// rtspsrc / souphttpsrc settings: latency and transport for RTSP; credentials for either.
fn configure_network_source(
    src: &gst::Element,
    rtsp: &RtspInputConfig,
    creds: Option<&Credentials>,
) {
    if src.has_property("latency") && src.has_property("protocols") {
        src.set_property("latency", rtsp.latency_ms);
        if rtsp.tcp {
            src.set_property_from_str("protocols", "tcp");
        }
        // the sender's NTP wall clock (from RTCP sender reports) on each buffer, for "ts"
        if src.has_property("add-reference-timestamp-meta") {
            src.set_property("add-reference-timestamp-meta", true);
        }
    }
    if let Some(c) = creds {
        if src.has_property("user-id") && src.has_property("user-pw") {
            src.set_property("user-id", &c.user);
            src.set_property("user-pw", &c.password);
        }
    }
}

/// The sender's wall clock for this buffer (NTP, from RTCP), when the stream carries it.
fn sender_clock(buffer: &gst::BufferRef) -> Option<SystemTime> {
    // seconds from 1900 (NTP) to 1970 (Unix)
    const NTP_TO_UNIX_NS: u64 = 2_208_988_800 * 1_000_000_000;
    buffer
        .iter_meta::<gst::meta::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-ntp")
        })
        .and_then(|m| m.timestamp().nseconds().checked_sub(NTP_TO_UNIX_NS))
        .map(|ns| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
}

/// The codec named by a `missing-plugin` element message (decodebin posts one when no decoder fits).
fn missing_plugin(s: &gst::StructureRef) -> Option<String> {
    if s.name() != "missing-plugin" {
        return None;
    }
    let kind = s.get::<String>("type").unwrap_or_default();
    if !kind.is_empty() && kind != "decoder" {
        return None;
    }
    let codec = s
        .get::<gst::Caps>("detail")
        .ok()
        .and_then(|c| c.structure(0).map(|st| st.name().to_string()))
        .or_else(|| s.get::<String>("name").ok())
        .unwrap_or_else(|| "unknown codec".into());
    Some(codec)
}

/// Why a file that reached its end is incomplete: its frames stop well before the duration its
/// container declares (a truncated download, a recording cut off). `None` when complete or unknown.
/// The slack (1 s or 2 %) keeps files whose audio outlasts their video slightly from being reported.
pub fn ends_early(declared_ns: Option<u64>, decoded_end_ns: Option<u64>) -> Option<String> {
    let (total, end) = (declared_ns?, decoded_end_ns?);
    let slack = (total / 50).max(1_000_000_000);
    if end.saturating_add(slack) >= total {
        return None;
    }
    Some(format!(
        "the file ends early: frames stop at {:.1} s of the {:.1} s its container declares \
         (truncated or damaged)",
        end as f64 / 1e9,
        total as f64 / 1e9
    ))
}

/// A one-line reason from a GStreamer error, in words a user can act on.
fn describe_error(error: &str, debug: &str, decoded: u64) -> String {
    let lower = format!("{error} {debug}").to_ascii_lowercase();
    let reason = if lower.contains("no decoder")
        || lower.contains("missing") && (lower.contains("plugin") || lower.contains("plug-in"))
    {
        format!(
            "no decoder installed for this codec ({})",
            first_line(error)
        )
    } else if lower.contains("could not determine type") || lower.contains("typefind") {
        "not a video file GStreamer can read (unknown format)".to_string()
    } else if lower.contains("no playable streams") || lower.contains("no known streams") {
        "no playable stream: the file is incomplete or damaged (for MP4: its index, the moov box, \
         is missing, as in a truncated or unfinished recording)"
            .to_string()
    } else if lower.contains("not-linked") || lower.contains("not linked") {
        "no video stream in this input".to_string()
    } else {
        // GStreamer's generic messages ("Could not open resource for reading and writing.") say more
        // in the last line of their debug text ("Failed to connect. (Generic error)")
        let detail = debug
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .filter(|l| l.len() <= 160 && !l.contains(".c(") && *l != first_line(error))
            .map(redact_words);
        match detail {
            Some(d) => format!("{} ({d})", first_line(error)),
            None => first_line(error).to_string(),
        }
    };
    if decoded > 0 {
        format!("{reason} (after {decoded} frames)")
    } else {
        reason
    }
}

/// Text with any URL's `user:password@` replaced (GStreamer's debug text may quote the location).
fn redact_words(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                super::config::redact_uri(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_early_allows_slack() {
        let s = 1_000_000_000u64;
        assert!(ends_early(Some(10 * s), Some(10 * s)).is_none());
        assert!(ends_early(Some(10 * s), Some(9 * s + s / 2)).is_none());
        assert!(ends_early(None, Some(s)).is_none());
        let why = ends_early(Some(10 * s), Some(5 * s)).unwrap();
        assert!(why.contains("5.0 s of the 10.0 s"), "{why}");
    }

    /// Nice values of this process's threads.
    #[cfg(target_os = "linux")]
    fn thread_nices() -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse().ok())
            .map(super::super::priority::nice_of)
            .collect()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_file_decodes_on_nicer_threads() {
        gst::init().unwrap();
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/shapes-demo.mp4");
        let base = super::super::priority::process_nice();
        let spec = SourceSpec {
            capacity: 1,
            background_nice: 3,
            ..SourceSpec::new(
                0,
                "nice".into(),
                SourceKind::File(demo.clone()),
                &SourceConfig::new(demo.display().to_string()),
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn(spec, stop.clone()).unwrap();
        // a frame out means the decoder's threads exist; the full queue keeps them alive
        assert!(matches!(
            h.rx.recv_timeout(Duration::from_secs(20)),
            Ok(SourceEvent::Frame(_))
        ));
        let nices = thread_nices();
        stop.store(true, Ordering::Relaxed);
        drop(h.rx);
        let _ = h.thread.join();
        assert!(nices.contains(&(base + 3).min(19)), "{nices:?}");
    }

    #[test]
    fn errors_in_words() {
        let e = describe_error("This file contains no playable streams.", "", 0);
        assert!(e.contains("moov"), "{e}");
        let e = describe_error("Your GStreamer installation is missing a plug-in.", "", 0);
        assert!(e.starts_with("no decoder installed"), "{e}");
        let e = describe_error(
            "Internal data stream error.",
            "streaming stopped, reason not-linked (-1)",
            3,
        );
        assert_eq!(e, "no video stream in this input (after 3 frames)");
        let e = describe_error(
            "Could not open resource for reading and writing.",
            "../gst/rtsp/gstrtspsrc.c(8076): gst_rtspsrc_open (): /GstPipeline:p/GstRTSPSrc:src:\n\
             Failed to connect to rtsp://bob:s3cret@10.0.0.1/x (Generic error)",
            0,
        );
        assert!(
            e.ends_with("(Failed to connect to rtsp://***@10.0.0.1/x (Generic error))"),
            "{e}"
        );
    }
}
