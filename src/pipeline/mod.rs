//! The streaming pipeline: sources → infer (batched across streams) → composite → sinks, each on its own
//! thread, joined by bounded crossbeam channels.

pub mod config;
pub mod outputs;
pub mod rtsp;
pub mod sink;
pub mod source;
pub mod stats;
pub mod timeline;
pub mod tracking;
mod witness;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use gstreamer as gst;

use crate::backend::BackendOptions;
use crate::error::{Error, Result};
use crate::frame::RgbFrame;
use crate::model::{Detection, MaskRcnn, StageTimes};
use crate::output::FrameRecord;
use crate::overlay::{Canvas, Compositor};
use config::{expand, PipelineConfig, SourceKind};
use outputs::OutputPlan;
use source::{Frame, SourceEvent, SourceHandle, SourceSpec};
use stats::{SourceSummary, StageStats, Summary};

/// Progress reporting hooks (the CLI draws indicatif bars with them).
pub trait Progress: Send {
    fn source_started(&mut self, _source: usize, _name: &str, _expected_frames: Option<u64>) {}
    fn frame_done(&mut self, _source: usize) {}
    fn source_ended(&mut self, _source: usize, _error: Option<&str>) {}
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Where a running pipeline serves RTSP (known once the server is bound).
pub type RtspReady = Box<dyn FnOnce(Vec<String>) + Send>;

/// Options beyond the pipeline file.
pub struct RunContext {
    pub stop: Arc<AtomicBool>,
    pub progress: Box<dyn Progress>,
    /// Called with the served URLs once the RTSP server is listening.
    pub on_rtsp_ready: Option<RtspReady>,
}

impl Default for RunContext {
    fn default() -> Self {
        RunContext {
            stop: Arc::new(AtomicBool::new(false)),
            progress: Box::new(NoProgress),
            on_rtsp_ready: None,
        }
    }
}

struct Inferred {
    frame: Frame,
    detections: Vec<Detection>,
    times: StageTimes,
    batch: usize,
}

enum Work {
    Frame(Box<Inferred>),
    End {
        source: usize,
        error: Option<String>,
    },
}

/// Loads the pipeline's engine (ONNX sessions, warm-up) for `run_with`.
pub fn load_model(cfg: &PipelineConfig) -> Result<MaskRcnn> {
    let opts = BackendOptions {
        kind: cfg.backend,
        threads: cfg.threads,
        ..Default::default()
    };
    MaskRcnn::load(&cfg.engine, &opts)
}

/// Runs a pipeline to the end of all its sources (or until `stop`), then reports.
pub fn run(cfg: &PipelineConfig, ctx: RunContext) -> Result<Summary> {
    cfg.validate()?;
    check_outputs(cfg)?;
    let loading = Instant::now();
    let model = load_model(cfg)?;
    let load = loading.elapsed();
    let (mut summary, _) = run_with(cfg, model, ctx)?;
    summary.load = load;
    Ok(summary)
}

/// Every file the run writes, resolved against its inputs and each other before anything is
/// written (see `outputs`).
pub fn check_outputs(cfg: &PipelineConfig) -> Result<()> {
    let mut plan = OutputPlan::default();
    plan_outputs(cfg, &mut plan)?;
    plan.check(cfg.output.overwrite)
}

/// Adds a pipeline's inputs and outputs to a plan (a batch checks all its runs together).
pub fn plan_outputs(cfg: &PipelineConfig, plan: &mut OutputPlan) -> Result<()> {
    for s in &cfg.sources {
        if let SourceKind::File(p) = s.kind()? {
            plan.input(&p);
        }
    }
    for s in &cfg.sources {
        let name = s.resolved_name();
        if let Some(t) = &cfg.output.video {
            plan.output(&PathBuf::from(expand(t, &name)), "video");
        }
        if let Some(t) = &cfg.output.jsonl {
            plan.output(&PathBuf::from(expand(t, &name)), "JSON Lines");
        }
        if let Some(t) = &cfg.output.events {
            plan.output(&PathBuf::from(expand(t, &name)), "events");
        }
    }
    Ok(())
}

/// Runs a pipeline on a loaded model (a batch loads it once for all its files); hands the model back.
pub fn run_with(
    cfg: &PipelineConfig,
    model: MaskRcnn,
    mut ctx: RunContext,
) -> Result<(Summary, MaskRcnn)> {
    cfg.validate()?;
    check_outputs(cfg)?;
    gst::init().map_err(|e| Error::Pipeline(format!("GStreamer: {e}")))?;
    witness::install();
    let provider = model.provider().to_string();
    let classes = model.classes().to_vec();
    let camera_credentials = credentials_from(
        cfg.rtsp_input.credentials_env.as_deref(),
        cfg.rtsp_input.credentials_file.as_deref(),
        "rtsp_input",
    )?;

    // RTSP server first: a bad address or credentials fail before any decoding starts
    let serve = cfg
        .output
        .rtsp
        .as_deref()
        .map(rtsp::ServeAddress::parse)
        .transpose()?;
    let server = match &serve {
        Some(addr) => {
            let creds = credentials_from(
                cfg.output.rtsp_credentials_env.as_deref(),
                cfg.output.rtsp_credentials_file.as_deref(),
                "output.rtsp",
            )?;
            let tls = match (&cfg.output.rtsp_tls_cert, &cfg.output.rtsp_tls_key) {
                (Some(c), Some(k)) => Some(rtsp::Tls::load(c, k)?),
                _ => None,
            };
            Some(rtsp::RtspServer::start(addr, creds, tls)?)
        }
        None => None,
    };

    let started = Instant::now();
    let names: Vec<String> = cfg.sources.iter().map(|s| s.resolved_name()).collect();
    // mounts exist before any frame, so clients may connect at once
    let mut mounts: Vec<Option<rtsp::Mount>> = Vec::new();
    if let (Some(server), Some(addr)) = (&server, &serve) {
        let auth =
            cfg.output.rtsp_credentials_env.is_some() || cfg.output.rtsp_credentials_file.is_some();
        for n in &names {
            mounts.push(Some(server.mount(&expand(&addr.path, n), auth)?));
        }
    } else {
        mounts.resize_with(names.len(), || None);
    }
    let mut kinds = Vec::new();
    let mut handles: Vec<SourceHandle> = Vec::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        let kind = s.kind()?;
        let name = names[i].clone();
        let spec = SourceSpec {
            capacity: cfg.queue.capacity_for(kind.is_live()),
            rtsp: cfg.rtsp_input.clone(),
            credentials: camera_credentials.clone(),
            ..SourceSpec::new(i, name.clone(), kind.clone(), s)
        };
        let handle = source::spawn(spec, ctx.stop.clone()).map_err(|e| match &kind {
            // check_file's errors already name the file
            SourceKind::File(_) => e,
            _ => Error::Input(format!("source {name} ({}): {e}", kind.describe())),
        })?;
        kinds.push(kind);
        handles.push(handle);
    }

    let any_live = kinds.iter().any(|k| k.is_live());
    let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(cfg.queue.capacity_for(any_live));
    let receivers: Vec<Receiver<SourceEvent>> = handles.iter().map(|h| h.rx.clone()).collect();
    let inf = cfg.inference.clone();
    let max_batch = inf.max_batch_for(model.provider());
    let infer_stop = ctx.stop.clone();
    let infer = std::thread::Builder::new()
        .name("infer".into())
        .spawn(move || infer_loop(model, receivers, work_tx, inf, max_batch, infer_stop))
        .map_err(|e| Error::Pipeline(format!("starting inference thread: {e}")))?;

    // composite + sinks on this thread
    let compositor = Compositor::new(cfg.overlay.clone());
    let mut sinks: HashMap<usize, SourceSinks> = HashMap::new();
    let run_id = tracking::run_id();
    let mut trackers: HashMap<usize, tracking::SourceTracking> = HashMap::new();
    let mut tracked_stats: HashMap<usize, crate::analytics::AnalyticsStats> = HashMap::new();
    let mut stages = StageStats::default();
    let mut frames = 0u64;
    let mut errors: HashMap<usize, String> = HashMap::new();
    let mut on_ready = ctx.on_rtsp_ready.take();
    if let (Some(server), Some(addr)) = (&server, &serve) {
        // mounts are known up front; announce before the first frame so clients can connect early
        let urls = names
            .iter()
            .map(|n| server.url(&expand(&addr.path, n)))
            .collect();
        if let Some(cb) = on_ready.take() {
            cb(urls);
        }
    }
    let mut sink_error: Option<Error> = None;
    for work in work_rx.iter() {
        match work {
            Work::Frame(item) => {
                let Inferred {
                    mut frame,
                    detections,
                    times,
                    batch,
                } = *item;
                let sid = frame.source;
                let out = match sinks.entry(sid) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let expected = handles[sid].stats.expected.load(Ordering::Relaxed);
                        ctx.progress.source_started(
                            sid,
                            &names[sid],
                            (expected > 0).then_some(expected),
                        );
                        let live = kinds[sid].is_live();
                        let opened =
                            SourceSinks::open(cfg, &names[sid], &frame, live, mounts[sid].take())
                                .and_then(|s| {
                                    tracking::SourceTracking::open(
                                        cfg,
                                        &names[sid],
                                        &run_id,
                                        &classes,
                                    )
                                    .map(|t| (s, t))
                                });
                        match opened {
                            Ok((s, t)) => {
                                if let Some(t) = t {
                                    trackers.insert(sid, t);
                                }
                                v.insert(s)
                            }
                            Err(e) => {
                                sink_error = Some(e);
                                ctx.stop.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                };
                let t = Instant::now();
                // the tracker sees all detections; outputs keep the user's score threshold
                let (kept, record, track_ids) = match tracking::frame_output(
                    trackers.get_mut(&sid),
                    &names[sid],
                    &frame,
                    detections,
                    cfg.inference.score_threshold,
                    &classes,
                    &mut stages,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        sink_error = Some(e);
                        ctx.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                };
                // JSON-only runs (analytics) never draw: no sink would show the pixels
                if out.shows_pixels() {
                    let (w, h) = (frame.width, frame.height);
                    let mut canvas = Canvas {
                        data: &mut frame.data,
                        width: w,
                        height: h,
                        stride: w * 3,
                    };
                    compositor.draw_tracked(&mut canvas, &kept, &classes, &track_ids);
                    if let Some(tr) = trackers.get(&sid) {
                        crate::analytics::draw::draw(&mut canvas, &compositor, &tr.analytics);
                    }
                }
                stages.record("composite", t.elapsed());
                let t = Instant::now();
                let decoded_at = frame.decoded_at;
                if let Err(e) = out.write(record, frame) {
                    sink_error = Some(e);
                    ctx.stop.store(true, Ordering::Relaxed);
                    break;
                }
                stages.record("sinks", t.elapsed());
                // decoded -> handed to every sink: queueing, batching, inference and compositing
                stages.record("latency", decoded_at.elapsed());
                let per = |d: Duration| d / batch.max(1) as u32;
                for (name, d) in times.iter() {
                    stages.record(name, per(d));
                }
                stages.record_batch(batch, sid);
                frames += 1;
                ctx.progress.frame_done(sid);
            }
            Work::End { source, error } => {
                if let Some(t) = trackers.remove(&source) {
                    t.finish_into(source, &mut tracked_stats, &mut errors);
                }
                if let Some(s) = sinks.remove(&source) {
                    if let Err(e) = s.finish() {
                        errors.entry(source).or_insert_with(|| e.to_string());
                    }
                }
                if let Some(e) = &error {
                    errors.insert(source, e.clone());
                }
                ctx.progress.source_ended(source, error.as_deref());
            }
        }
    }
    // finalize whatever is still open (stop requested, or a sink failed)
    drop(work_rx);
    for (sid, t) in trackers.drain() {
        t.finish_into(sid, &mut tracked_stats, &mut errors);
    }
    for (sid, s) in sinks.drain() {
        if let Err(e) = s.finish() {
            errors.entry(sid).or_insert_with(|| e.to_string());
        }
    }
    let (model, infer_result) = infer
        .join()
        .map_err(|_| Error::Pipeline("inference thread panicked".into()))?;
    let mut sources = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        // our receiver goes first, so a source still sending into a full queue is released
        drop(h.rx);
        let _ = h.thread.join();
        sources.push(SourceSummary {
            name: names[i].clone(),
            input: kinds[i].describe(),
            frames: h.stats.decoded.load(Ordering::Relaxed),
            dropped: h.stats.dropped.load(Ordering::Relaxed),
            reconnects: h.stats.reconnects.load(Ordering::Relaxed),
            error: errors.remove(&i),
            analytics: tracked_stats.remove(&i),
        });
    }
    drop(server);
    if let Some(e) = sink_error {
        return Err(e);
    }
    infer_result?;
    let summary = Summary {
        frames,
        load: Duration::ZERO,
        elapsed: started.elapsed(),
        stages,
        sources,
        provider,
    };
    Ok((summary, model))
}

/// `user:password` from an environment variable or a file (`what` names the section in errors).
fn credentials_from(
    env: Option<&str>,
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<Option<rtsp::Credentials>> {
    if let Some(var) = env {
        let v = std::env::var(var).map_err(|_| {
            Error::Config(format!(
                "{what} credentials: environment variable {var} is not set"
            ))
        })?;
        return rtsp::Credentials::parse(&v, &format!("environment variable {var}")).map(Some);
    }
    if let Some(path) = file {
        warn_if_others_can_read(path);
        let v = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        return rtsp::Credentials::parse(&v, &path.display().to_string()).map(Some);
    }
    Ok(None)
}

/// A password file that group or others can read is a leak waiting to happen: say so.
fn warn_if_others_can_read(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "credentials file is readable by other users: chmod 600 it"
                );
                eprintln!(
                    "warning: credentials file {} is readable by other users (mode {:o}): chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
        }
    }
}

/// The inference stage: gathers up to `max_batch` frames across sources (waiting at most `max_wait_ms`
/// after the first), runs the model once, forwards results in order.
fn infer_loop(
    mut model: MaskRcnn,
    receivers: Vec<Receiver<SourceEvent>>,
    out: Sender<Work>,
    cfg: config::InferenceConfig,
    max_batch: usize,
    stop: Arc<AtomicBool>,
) -> (MaskRcnn, Result<()>) {
    let result = infer_batches(&mut model, receivers, out, cfg, max_batch, stop);
    (model, result)
}

fn infer_batches(
    model: &mut MaskRcnn,
    receivers: Vec<Receiver<SourceEvent>>,
    out: Sender<Work>,
    cfg: config::InferenceConfig,
    max_batch: usize,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let _span = tracing::info_span!("infer").entered();
    let mut open: Vec<bool> = vec![true; receivers.len()];
    let mut batch: Vec<Frame> = Vec::with_capacity(max_batch);
    let mut next = 0usize; // round-robin start, so no stream starves another
    while open.iter().any(|&o| o) {
        batch.clear();
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut first_at: Option<Instant> = None;
        let mut ended: Vec<(usize, Option<String>)> = Vec::new();
        loop {
            // take what is ready now, one frame per source per round
            let mut got = false;
            for k in 0..receivers.len() {
                let i = (next + k) % receivers.len();
                if !open[i] || batch.len() >= max_batch {
                    continue;
                }
                match receivers[i].try_recv() {
                    Ok(SourceEvent::Frame(f)) => {
                        batch.push(f);
                        first_at.get_or_insert_with(Instant::now);
                        got = true;
                    }
                    Ok(SourceEvent::End { source, error }) => {
                        open[i] = false;
                        ended.push((source, error));
                        got = true;
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => {}
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open[i] = false;
                        ended.push((i, Some("source thread ended unexpectedly".into())));
                    }
                }
            }
            next = (next + 1) % receivers.len().max(1);
            if batch.len() >= max_batch || !ended.is_empty() {
                break;
            }
            let waited_enough =
                first_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(cfg.max_wait_ms));
            if waited_enough
                || (first_at.is_none() && Instant::now() >= deadline)
                || stop.load(Ordering::Relaxed) && batch.is_empty()
            {
                break;
            }
            if !got {
                // block until any open source has something, for at most the remaining wait
                let mut sel = Select::new();
                let idx: Vec<usize> = (0..receivers.len()).filter(|&i| open[i]).collect();
                for &i in &idx {
                    sel.recv(&receivers[i]);
                }
                let wait = match first_at {
                    Some(t) => Duration::from_millis(cfg.max_wait_ms).saturating_sub(t.elapsed()),
                    None => deadline.saturating_duration_since(Instant::now()),
                };
                if idx.is_empty() {
                    break;
                }
                let _ = sel.ready_timeout(wait);
            }
        }
        if !batch.is_empty() {
            let views: Result<Vec<RgbFrame<'_>>> = batch
                .iter()
                .map(|f| RgbFrame::new(f.width, f.height, f.width * 3, &f.data))
                .collect();
            let results = model.detect_batch(&views?)?;
            let n = batch.len();
            for (frame, r) in batch.drain(..).zip(results) {
                let item = Inferred {
                    frame,
                    detections: r.detections,
                    times: r.times,
                    batch: n,
                };
                if out.send(Work::Frame(Box::new(item))).is_err() {
                    return Ok(());
                }
            }
        }
        for (source, error) in ended {
            if out.send(Work::End { source, error }).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The sinks of one source, opened on its first frame (they need its size and rate).
struct SourceSinks {
    video: Option<sink::AppSrcPipeline>,
    preview: Option<sink::AppSrcPipeline>,
    jsonl: Option<sink::JsonlSink>,
    rtsp: Option<rtsp::Mount>,
    caps: gst::Caps,
}

impl SourceSinks {
    fn open(
        cfg: &PipelineConfig,
        name: &str,
        first: &Frame,
        live: bool,
        rtsp: Option<rtsp::Mount>,
    ) -> Result<Self> {
        let o = &cfg.output;
        let (w, h, fps) = (first.width, first.height, first.fps);
        let video = match &o.video {
            Some(t) => Some(sink::video_file(
                &PathBuf::from(expand(t, name)),
                w,
                h,
                fps,
                o.bitrate_kbps,
                live,
                o.fragment_ms,
            )?),
            None => None,
        };
        let jsonl = match &o.jsonl {
            Some(t) => Some(sink::JsonlSink::create(&PathBuf::from(expand(t, name)))?),
            None => None,
        };
        let preview = if o.preview {
            Some(sink::preview(name, w, h, fps)?)
        } else {
            None
        };
        let caps = sink::raw_caps(w, h, fps);
        Ok(SourceSinks {
            video,
            preview,
            jsonl,
            rtsp,
            caps,
        })
    }

    /// A video file, preview or RTSP stream takes the frames' pixels.
    fn shows_pixels(&self) -> bool {
        self.video.is_some() || self.preview.is_some() || self.rtsp.is_some()
    }

    fn write(&mut self, record: FrameRecord, frame: Frame) -> Result<()> {
        if let Some(j) = &mut self.jsonl {
            j.write(&record)?;
        }
        if !self.shows_pixels() {
            return Ok(());
        }
        let buffer = sink::rgb_buffer(frame.data, frame.pts_ns, frame.duration_ns);
        if let Some(m) = &self.rtsp {
            m.push(&buffer, &self.caps);
        }
        if let Some(p) = &self.preview {
            p.push(buffer.clone())?;
        }
        if let Some(v) = &self.video {
            v.push(buffer)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let mut first_err = None;
        for p in [self.video, self.preview].into_iter().flatten() {
            if let Err(e) = p.finish(Duration::from_secs(30)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// True when this source kind needs no file to exist (used by batch to list inputs).
pub fn is_video_file(path: &std::path::Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("mp4" | "mkv" | "mov" | "webm" | "avi" | "m4v" | "ts" | "mts" | "flv" | "ogv")
    )
}

impl SourceKind {
    pub fn describe(&self) -> String {
        match self {
            SourceKind::File(p) => p.display().to_string(),
            SourceKind::Uri(u) | SourceKind::Rtsp(u) => config::redact_uri(u),
            SourceKind::V4l2(d) => d.clone(),
            SourceKind::Test { pattern, .. } => format!("test pattern {pattern}"),
        }
    }
}
