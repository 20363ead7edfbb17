//! The composite stage, on the pipeline's own thread: per source it opens the sinks on the first
//! frame, runs the analytics (tracker, zones, lines, events), draws the overlay and hands the frame and
//! its record to every sink; at a source's end it finalizes them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;

use super::config::{expand, PipelineConfig, SourceKind};
use super::infer::Inferred;
use super::observe::{Observer, Observers};
use super::source::{Frame, SourceStats};
use super::stats::{StageStats, Steady};
use super::tracking::{self, SourceTracking};
use super::{rtsp, sink, Progress};
use crate::analytics::AnalyticsStats;
use crate::error::{Error, Result};
use crate::output::FrameRecord;
use crate::overlay::{Canvas, Compositor};

/// What the composite stage knows of each source.
pub(super) struct SourceInfo {
    pub name: String,
    pub kind: SourceKind,
    pub stats: Arc<SourceStats>,
    /// Its RTSP mount, until the sinks take it on the first frame.
    pub mount: Option<rtsp::Mount>,
}

pub(super) struct Composer<'a> {
    cfg: &'a PipelineConfig,
    /// Inference runs on the CPU (the default of `[output] x264_threads`).
    inference_on_cpu: bool,
    classes: Vec<String>,
    compositor: Compositor,
    run_id: String,
    pub sources: Vec<SourceInfo>,
    sinks: HashMap<usize, SourceSinks>,
    trackers: HashMap<usize, SourceTracking>,
    pub tracked: HashMap<usize, AnalyticsStats>,
    pub stages: StageStats,
    pub frames: u64,
    /// Frames whose completion starts the steady-state clock (the model's warm-up calls).
    warm_up: u64,
    /// When frame `warm_up` and the latest frame were done.
    warm_at: Option<(Instant, Option<Duration>)>,
    last_at: Option<(Instant, Option<Duration>)>,
    pub errors: HashMap<usize, String>,
    observers: Observers,
}

/// Model calls left out of the steady-state figure: the first ones pay ONNX Runtime's allocations
/// (`bench` leaves out the same calls from its model-only figure).
pub const WARM_UP_CALLS: u64 = 3;

impl<'a> Composer<'a> {
    /// Frames done after the warm-up ones, and the time they took (completion to completion).
    pub fn steady(&self) -> Option<Steady> {
        let (from, to) = (self.warm_at?, self.last_at?);
        let frames = self.frames - self.warm_up;
        (frames > 0).then(|| Steady {
            frames,
            elapsed: to.0 - from.0,
            cpu: to.1.zip(from.1).map(|(b, a)| b.saturating_sub(a)),
        })
    }

    /// `workers`: model calls in flight (each pays the warm-up); `inference_on_cpu`: see
    /// `[output] x264_threads`.
    pub fn new(
        cfg: &'a PipelineConfig,
        classes: Vec<String>,
        sources: Vec<SourceInfo>,
        observers: Observers,
        (workers, inference_on_cpu): (usize, bool),
    ) -> Self {
        Composer {
            cfg,
            inference_on_cpu,
            classes,
            compositor: Compositor::new(cfg.overlay.clone()),
            run_id: tracking::run_id(),
            sources,
            sinks: HashMap::new(),
            trackers: HashMap::new(),
            tracked: HashMap::new(),
            stages: StageStats::default(),
            frames: 0,
            warm_up: WARM_UP_CALLS
                * (cfg.inference.max_batch.unwrap_or(1).max(1) * workers.max(1)) as u64,
            warm_at: None,
            last_at: None,
            errors: HashMap::new(),
            observers,
        }
    }

    /// One inferred frame through analytics, overlay and sinks. An error stops the run.
    pub fn frame(&mut self, item: Inferred, progress: &mut dyn Progress) -> Result<()> {
        let Inferred {
            mut frame,
            detections,
            times,
            batch,
        } = item;
        let sid = frame.source;
        if !self.sinks.contains_key(&sid) {
            self.open(sid, &frame, progress)?;
        }
        let t = Instant::now();
        // the tracker sees all detections; outputs keep the user's score threshold
        let (kept, record, track_ids) = tracking::frame_output(
            self.trackers.get_mut(&sid),
            &self.sources[sid].name,
            &frame,
            detections,
            self.cfg.inference.score_threshold,
            &self.classes,
            &mut self.stages,
        )?;
        let Some(out) = self.sinks.get_mut(&sid) else {
            return Ok(());
        };
        let name = &self.sources[sid].name;
        self.observers.frame(name, &record);
        let observed = self.observers.wants_pixels(name);
        // JSON-only runs (analytics) never draw: no sink or viewer would show the pixels
        if out.shows_pixels() || observed {
            let (w, h) = (frame.width, frame.height);
            let mut canvas = Canvas {
                data: &mut frame.data,
                width: w,
                height: h,
                stride: w * 3,
            };
            self.compositor
                .draw_tracked(&mut canvas, &kept, &self.classes, &track_ids);
            if let Some(tr) = self.trackers.get(&sid) {
                crate::analytics::draw::draw(&mut canvas, &self.compositor, &tr.analytics);
            }
            if observed {
                self.observers.annotated(name, &frame.data, w, h);
            }
        }
        self.stages.record("composite", t.elapsed());
        let t = Instant::now();
        let decoded_at = frame.decoded_at;
        out.write(record, frame)?;
        self.stages.record("sinks", t.elapsed());
        // decoded -> handed to every sink: queueing, batching, inference and compositing
        self.stages.record("latency", decoded_at.elapsed());
        let per = |d: Duration| d / batch.max(1) as u32;
        for (name, d) in times.iter() {
            self.stages.record(name, per(d));
        }
        self.stages.record_batch(batch, sid);
        self.frames += 1;
        let now = (Instant::now(), super::stats::process_cpu());
        if self.frames == self.warm_up {
            self.warm_at = Some(now);
        }
        self.last_at = Some(now);
        super::metrics::frame(&self.sources[sid].name);
        progress.frame_done(sid);
        Ok(())
    }

    /// The sinks and the analytics of a source, on its first frame (they need its size and rate).
    fn open(&mut self, sid: usize, first: &Frame, progress: &mut dyn Progress) -> Result<()> {
        let src = &mut self.sources[sid];
        let expected = src.stats.expected.load(Ordering::Relaxed);
        progress.source_started(sid, &src.name, (expected > 0).then_some(expected));
        let live = src.kind.is_live();
        let sinks = SourceSinks::open(
            self.cfg,
            &src.name,
            (first, live),
            src.mount.take(),
            self.inference_on_cpu,
        )?;
        let observers = self.observers.clone();
        if let Some(t) =
            SourceTracking::open(self.cfg, &src.name, &self.run_id, &self.classes, observers)?
        {
            self.trackers.insert(sid, t);
        }
        self.sinks.insert(sid, sinks);
        self.observers
            .source_started(&src.name, first.width, first.height);
        Ok(())
    }

    /// A source added at run time; its id is the next index.
    pub fn add(&mut self, info: SourceInfo) {
        self.sources.push(info);
    }

    /// A source ended (`error` when it failed): its analytics and sinks are finalized.
    pub fn end(&mut self, source: usize, error: Option<String>, progress: &mut dyn Progress) {
        self.close(source);
        progress.source_ended(source, error.as_deref());
        self.observers
            .source_ended(&self.sources[source].name, error.as_deref());
        if let Some(e) = error {
            self.errors.insert(source, e);
        }
    }

    fn close(&mut self, source: usize) {
        if let Some(t) = self.trackers.remove(&source) {
            t.finish_into(source, &mut self.tracked, &mut self.errors);
        }
        if let Some(s) = self.sinks.remove(&source) {
            if let Err(e) = s.finish() {
                self.errors.entry(source).or_insert_with(|| e.to_string());
            }
        }
    }

    /// Finalizes whatever is still open (stop requested, or a sink failed).
    pub fn close_all(&mut self) {
        let open: Vec<usize> = self
            .sinks
            .keys()
            .chain(self.trackers.keys())
            .copied()
            .collect();
        for sid in open {
            self.close(sid);
        }
    }
}

/// The sinks of one source, opened on its first frame (they need its size and rate).
pub(super) struct SourceSinks {
    video: Option<sink::AppSrcPipeline>,
    preview: Option<sink::AppSrcPipeline>,
    jsonl: Option<sink::JsonlSink>,
    rtsp: Option<rtsp::Mount>,
    caps: gst::Caps,
    /// `caps`' layout and colorimetry, which the annotated frames are converted to.
    info: gstreamer_video::VideoInfo,
}

impl SourceSinks {
    fn open(
        cfg: &PipelineConfig,
        name: &str,
        (first, live): (&Frame, bool),
        rtsp: Option<rtsp::Mount>,
        inference_on_cpu: bool,
    ) -> Result<Self> {
        let o = &cfg.output;
        let fps = first.fps;
        // the JSON Lines keep the frame's size; the pictures may be a pixel larger (4:2:0)
        let (w, h) = super::i420::even_size(first.width, first.height);
        let video = match &o.video {
            Some(t) => Some(sink::video_file(
                &PathBuf::from(expand(t, name)),
                (w, h),
                fps,
                live,
                o,
                (cfg.queue.background_nice, inference_on_cpu),
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
        let caps = super::i420::caps(w, h, fps);
        let info = gstreamer_video::VideoInfo::from_caps(&caps)
            .map_err(|e| Error::Pipeline(format!("{name}: output caps {caps}: {e}")))?;
        Ok(SourceSinks {
            video,
            preview,
            jsonl,
            rtsp,
            caps,
            info,
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
        let buffer = super::i420::to_buffer(
            &frame.data,
            (frame.width, frame.height),
            &self.info,
            frame.pts_ns,
            frame.duration_ns,
        )?;
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
