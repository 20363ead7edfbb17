//! The streaming pipeline: sources → infer (batched across streams) → composite → sinks, each on its own
//! thread, joined by bounded crossbeam channels.

mod composite;
pub mod config;
pub mod control;
mod i420;
mod infer;
pub mod metrics;
pub mod mqtt;
pub mod observe;
pub mod outputs;
mod priority;
pub mod rtsp;
pub mod sink;
pub mod source;
pub mod stats;
pub mod timeline;
pub mod tracking;
mod witness;
pub mod workers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use gstreamer as gst;

use crate::backend::BackendOptions;
use crate::error::{Error, Result};
pub use composite::WARM_UP_CALLS;
use composite::{Composer, SourceInfo};
use config::{expand, PipelineConfig, SourceKind};
use infer::Work;
use observe::Observer;
use outputs::OutputPlan;
use source::{SourceEvent, SourceSpec};
use stats::{SourceSummary, Summary};
pub use workers::Models;

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
    /// Live consumers of events, records and pixels (MQTT, HTTP API).
    pub observers: observe::Observers,
    /// Commands adding and removing sources while the run goes on (`control::Control`'s other end).
    /// With it, the run also goes on when every source has ended, until `stop`.
    pub control: Option<Receiver<control::Command>>,
}

impl Default for RunContext {
    fn default() -> Self {
        RunContext {
            stop: Arc::new(AtomicBool::new(false)),
            progress: Box::new(NoProgress),
            on_rtsp_ready: None,
            observers: observe::Observers::default(),
            control: None,
        }
    }
}

/// Loads the pipeline's engine (ONNX sessions, warm-up), a copy per inference worker, for `run_with`.
pub fn load_model(cfg: &PipelineConfig) -> Result<Models> {
    let opts = BackendOptions {
        kind: cfg.backend,
        threads: cfg.threads,
        precision: cfg.precision,
        ..Default::default()
    };
    Models::load(&cfg.engine, &opts, cfg.inference.workers)
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

/// Runs a pipeline on loaded models (a batch loads them once for all its files); hands them back.
pub fn run_with(
    cfg: &PipelineConfig,
    mut model: Models,
    ctx: RunContext,
) -> Result<(Summary, Models)> {
    cfg.validate()?;
    cfg.analytics_settings()
        .check_classes(model.first().classes())?;
    check_outputs(cfg)?;
    model.set_min_score(cfg.detection_floor());
    gst::init().map_err(|e| Error::Pipeline(format!("GStreamer: {e}")))?;
    witness::install();
    Built::build(cfg, ctx)?.start(model)?.join()
}

/// A pipeline whose RTSP server and sources are up, before inference starts.
struct Built<'a> {
    cfg: &'a PipelineConfig,
    ctx: RunContext,
    server: Option<Arc<rtsp::RtspServer>>,
    spawner: control::Spawner,
    sources: Vec<SourceInfo>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each starting source's own stop, for when inference ends before the source does.
    cancels: Vec<Arc<AtomicBool>>,
    receivers: Vec<Receiver<SourceEvent>>,
    started: Instant,
}

type InferThread = std::thread::JoinHandle<(Option<Models>, Result<()>, Option<control::Spawner>)>;

/// A pipeline whose inference thread runs; the composite stage runs on the caller's thread in `join`.
struct Running<'a> {
    built: Built<'a>,
    provider: String,
    /// Inference workers, and whether they run on the CPU.
    inference: (usize, bool),
    classes: Vec<String>,
    infer: InferThread,
    work: Receiver<Work>,
}

impl<'a> Built<'a> {
    fn build(cfg: &'a PipelineConfig, mut ctx: RunContext) -> Result<Self> {
        let names: Vec<String> = cfg.sources.iter().map(|s| s.resolved_name()).collect();
        // RTSP server first: a bad address or credentials fail before any decoding starts
        let (server, mut mounts) = serve(cfg, &names)?;
        if let (Some(server), Some(cb)) = (&server, ctx.on_rtsp_ready.take()) {
            // mounts exist before any frame: announce them so clients can connect early
            cb(mounts
                .iter()
                .flatten()
                .map(|m| server.url(&m.path))
                .collect());
        }
        let credentials = credentials_from(
            cfg.rtsp_input.credentials_env.as_deref(),
            cfg.rtsp_input.credentials_file.as_deref(),
            "rtsp_input",
        )?;
        let started = Instant::now();
        let server = server.map(Arc::new);
        ctx.observers.pipeline_started();
        let spawner = control::Spawner::new(
            cfg,
            credentials.clone(),
            server.clone(),
            ctx.stop.clone(),
            ctx.observers.clone(),
        );
        let mut built = Built {
            cfg,
            ctx,
            server,
            spawner,
            sources: Vec::new(),
            threads: Vec::new(),
            cancels: Vec::new(),
            receivers: Vec::new(),
            started,
        };
        for (i, (s, name)) in cfg.sources.iter().zip(names).enumerate() {
            let kind = s.kind()?;
            let spec = SourceSpec {
                capacity: cfg.queue.capacity_for(kind.is_live()),
                background_nice: cfg.queue.background_nice,
                rtsp: cfg.rtsp_input.clone(),
                credentials: credentials.clone(),
                ..SourceSpec::new(i, name.clone(), kind.clone(), s)
            };
            let handle = source::spawn(spec, built.ctx.stop.clone()).map_err(|e| match &kind {
                // check_file's errors already name the file
                SourceKind::File(_) => e,
                _ => Error::Input(format!("source {name} ({}): {e}", kind.describe())),
            })?;
            built
                .ctx
                .observers
                .source_added(&name, &kind.describe(), &handle.stats);
            built.cancels.push(handle.cancel.clone());
            built.spawner.started(s, &name, handle.cancel);
            built.receivers.push(handle.rx);
            built.threads.push(handle.thread);
            built.sources.push(SourceInfo {
                name,
                kind,
                stats: handle.stats,
                mount: mounts[i].take(),
            });
        }
        Ok(built)
    }

    /// Starts the inference thread, fed by every source.
    fn start(mut self, model: Models) -> Result<Running<'a>> {
        // sources added at run time are mostly cameras: keep the live (short) queue then
        let any_live = self.sources.iter().any(|s| s.kind.is_live()) || self.ctx.control.is_some();
        let (work_tx, work) = crossbeam_channel::bounded(self.cfg.queue.capacity_for(any_live));
        let inf = self.cfg.inference.clone();
        let first = model.first();
        let max_batch = inf.max_batch_for(first.provider());
        let (provider, classes) = (first.provider().to_string(), first.classes().to_vec());
        let inference = (
            model.workers(),
            first.provider() == crate::backend::Provider::Cpu,
        );
        let (receivers, stop) = (self.receivers.clone(), self.ctx.stop.clone());
        let spawner = std::mem::replace(
            &mut self.spawner,
            control::Spawner::new(self.cfg, None, None, stop.clone(), Default::default()),
        );
        let keep_running = self.cfg.http.keep_running;
        let controls = self.ctx.control.take().map(|commands| infer::Controls {
            commands,
            spawner,
            keep_running,
        });
        let infer = std::thread::Builder::new()
            .name("infer".into())
            .spawn(move || {
                infer::infer_loop(model, receivers, work_tx, inf, max_batch, stop, controls)
            })
            .map_err(|e| Error::Pipeline(format!("starting inference thread: {e}")))?;
        Ok(Running {
            built: self,
            provider,
            inference,
            classes,
            infer,
            work,
        })
    }
}

impl Running<'_> {
    /// The composite stage until every source has ended (or a stop), then the summary.
    fn join(self) -> Result<(Summary, Models)> {
        let Running {
            built,
            provider,
            inference,
            classes,
            infer,
            work,
        } = self;
        let Built {
            cfg,
            mut ctx,
            server,
            spawner: _,
            sources,
            threads,
            cancels,
            receivers,
            started,
        } = built;
        let mut composer = Composer::new(cfg, classes, sources, ctx.observers.clone(), inference);
        let mut sink_error = None;
        for w in work.iter() {
            let result = match w {
                Work::Frame(item) => composer.frame(*item, ctx.progress.as_mut()),
                Work::Added(info) => {
                    composer.add(*info);
                    Ok(())
                }
                Work::End {
                    source,
                    error,
                    reply,
                } => {
                    composer.end(source, error, ctx.progress.as_mut());
                    if let Some(r) = reply {
                        let _ = r.send(Ok(()));
                    }
                    Ok(())
                }
            };
            if let Err(e) = result {
                sink_error = Some(e);
                ctx.stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        drop(work);
        composer.close_all();
        let (model, infer_result, spawner) = infer
            .join()
            .map_err(|_| Error::Pipeline("inference thread panicked".into()))?;
        // nothing reads the sources any more: a file source still decoding (inference failed) would
        // wait for room in its queue forever; its own flag ends it, not the run's stop, which a
        // batch reads as "stop every file"
        for c in cancels
            .iter()
            .chain(spawner.iter().flat_map(|s| s.cancels()))
        {
            c.store(true, Ordering::Relaxed);
        }
        // our receivers go first, so a source still sending into a full queue is released
        drop(receivers);
        let added = spawner.map(|s| s.threads).unwrap_or_default();
        for t in threads.into_iter().chain(added) {
            let _ = t.join();
        }
        drop(server);
        if let Some(e) = sink_error {
            return Err(e);
        }
        infer_result?;
        let model = model
            .ok_or_else(|| Error::Pipeline("the inference workers' models were lost".into()))?;
        let summary = Summary {
            frames: composer.frames,
            load: Duration::ZERO,
            elapsed: started.elapsed(),
            steady: composer.steady(),
            sources: source_summaries(&mut composer),
            stages: std::mem::take(&mut composer.stages),
            provider,
            workers: model.workers(),
        };
        Ok((summary, model))
    }
}

fn source_summaries(c: &mut Composer<'_>) -> Vec<SourceSummary> {
    let mut out = Vec::new();
    for (i, s) in c.sources.iter().enumerate() {
        out.push(SourceSummary {
            name: s.name.clone(),
            input: s.kind.describe(),
            frames: s.stats.decoded.load(Ordering::Relaxed),
            dropped: s.stats.dropped.load(Ordering::Relaxed),
            reconnects: s.stats.reconnects.load(Ordering::Relaxed),
            error: c.errors.remove(&i),
            analytics: c.tracked.remove(&i),
        });
    }
    out
}

/// The RTSP server (when the run serves) and a mount per source, made before any frame so clients
/// may connect at once.
fn serve(
    cfg: &PipelineConfig,
    names: &[String],
) -> Result<(Option<rtsp::RtspServer>, Vec<Option<rtsp::Mount>>)> {
    let Some(url) = &cfg.output.rtsp else {
        return Ok((None, names.iter().map(|_| None).collect()));
    };
    let addr = rtsp::ServeAddress::parse(url)?;
    let creds = credentials_from(
        cfg.output.rtsp_credentials_env.as_deref(),
        cfg.output.rtsp_credentials_file.as_deref(),
        "output.rtsp",
    )?;
    let tls = match (&cfg.output.rtsp_tls_cert, &cfg.output.rtsp_tls_key) {
        (Some(c), Some(k)) => Some(rtsp::Tls::load(c, k)?),
        _ => None,
    };
    let server = rtsp::RtspServer::start(&addr, creds, tls)?;
    let mounts = names
        .iter()
        .map(|n| server.mount_source(n).map(Some))
        .collect::<Result<Vec<_>>>()?;
    Ok((Some(server), mounts))
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
