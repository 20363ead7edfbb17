use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressDrawTarget};
use maskstream::http::{hub::Hub, HttpServer};
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::control::Control;
use maskstream::pipeline::{self, RunContext};

use super::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (pipelines/*.toml); the flags below override it or replace it.
    pub pipeline: Option<PathBuf>,
    /// Source: file, URI, rtsp://, v4l2:///dev/videoN or test://PATTERN (repeatable).
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Annotated video file (.mp4/.mkv); {name} is the source's name.
    #[arg(long)]
    pub output: Option<String>,
    /// JSON Lines file; {name} is the source's name.
    #[arg(long)]
    pub json: Option<String>,
    /// Analytics events as JSON Lines (track_start/end, zone_enter/leave, line_cross, loiter); {name}
    /// is the source's name.
    #[arg(long)]
    pub events: Option<String>,
    /// Serve the annotated stream at rtsp://HOST:PORT/PATH.
    #[arg(long)]
    pub serve: Option<String>,
    /// Show a preview window.
    #[arg(long)]
    pub preview: bool,
    /// HTTP API, metrics and live page on PORT (127.0.0.1) or ADDR:PORT; port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<String>,
    /// Replace output files that already exist (inputs are never replaced).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub model: super::ModelFlags,
    /// Inference threads (0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn config(args: &Args) -> anyhow::Result<PipelineConfig> {
    let mut cfg = match &args.pipeline {
        Some(p) => PipelineConfig::load(p)?,
        None => {
            if args.inputs.is_empty() && args.http.is_none() {
                bail!(
                    "give a pipeline file or at least one --input (or --http to add streams later)"
                );
            }
            PipelineConfig {
                engine: super::default_engine(),
                ..Default::default()
            }
        }
    };
    if !args.inputs.is_empty() {
        cfg.sources = args
            .inputs
            .iter()
            .map(|u| SourceConfig {
                uri: u.clone(),
                name: None,
                max_frames: None,
                ..SourceConfig::new("")
            })
            .collect();
    }
    if args.output.is_some() {
        cfg.output.video = args.output.clone();
    }
    if args.json.is_some() {
        cfg.output.jsonl = args.json.clone();
    }
    if args.events.is_some() {
        cfg.output.events = args.events.clone();
    }
    if args.serve.is_some() {
        cfg.output.rtsp = args.serve.clone();
    }
    if args.http.is_some() {
        cfg.http.listen = args.http.clone();
    }
    cfg.output.preview |= args.preview;
    cfg.output.overwrite |= args.overwrite;
    args.model.apply(&mut cfg);
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The HTTP API when `[http] listen` is set: its hub observes the run, its control adds and removes
/// streams.
fn start_http(cfg: &PipelineConfig, ctx: &mut RunContext) -> anyhow::Result<Option<HttpServer>> {
    if cfg.http.listen.is_none() {
        return Ok(None);
    }
    let hub = Arc::new(Hub::new(Duration::from_secs_f64(cfg.http.ready_within_s)));
    let (control, commands) = Control::channel();
    let server = HttpServer::start(&cfg.http, hub.clone(), Some(control), None)
        .context("starting the HTTP API")?;
    ctx.observers.push(hub);
    ctx.control = Some(commands);
    eprintln!("http: serving on http://{}/", server.addr());
    Ok(Some(server))
}

/// SIGINT/SIGTERM: the first asks for a clean stop (EOS, files finalized), the second exits at once.
pub fn install_signal_handler() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let result = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
        eprintln!("stopping: finishing outputs (signal again to exit at once)");
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot install the signal handler");
    }
    stop
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let stop = install_signal_handler();
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let mut ctx = RunContext {
        stop: stop.clone(),
        progress: Box::new(Bars::new(multi, None)),
        on_rtsp_ready: Some(Box::new(|urls| {
            for u in urls {
                eprintln!("serving {u}");
            }
        })),
        ..Default::default()
    };
    // the API first: health answers while the engine loads, and a taken port fails before it
    let http = start_http(&cfg, &mut ctx)?;
    let summary = pipeline::run(&cfg, ctx).context("running the pipeline");
    drop(http);
    let summary = summary?;
    eprint!("{summary}");
    let failed = summary.failed();
    if !failed.is_empty() {
        bail!(
            "{}",
            failed
                .iter()
                .map(|s| format!("{}: {}", s.input, s.error.as_deref().unwrap_or("failed")))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if stop.load(Ordering::Relaxed) {
        eprintln!("stopped by signal; outputs finalized");
    }
    Ok(())
}
