use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressDrawTarget};
use maskstream::http::{hub::Hub, HttpServer, QueueGauge};
use maskstream::pipeline::config::{MqttConfig, PipelineConfig, SourceConfig};
use maskstream::pipeline::control::Control;
use maskstream::pipeline::mqtt::MqttPublisher;
use maskstream::pipeline::observe::Observers;
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
    /// Publish events (and counts) to an MQTT broker: mqtt://HOST:PORT or mqtts://HOST:PORT
    /// (replaces the pipeline file's [output.mqtt] url; its other keys apply).
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
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
    if let Some(url) = &args.mqtt {
        set_mqtt_url(&mut cfg, url);
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

/// The HTTP API when `[http] listen` is set, and its hub (to add to the run's observers). With
/// `control`, its POST/DELETE add and remove streams.
pub fn start_http(
    cfg: &PipelineConfig,
    control: Option<Control>,
    mqtt: Option<Arc<dyn QueueGauge>>,
) -> anyhow::Result<Option<(HttpServer, Arc<Hub>)>> {
    if cfg.http.listen.is_none() {
        return Ok(None);
    }
    let hub = Arc::new(Hub::new(Duration::from_secs_f64(cfg.http.ready_within_s)));
    let server = HttpServer::start(&cfg.http, hub.clone(), control, mqtt)
        .context("starting the HTTP API")?;
    eprintln!("http: serving on http://{}/", server.addr());
    Ok(Some((server, hub)))
}

/// `--mqtt URL`: the pipeline file's `[output.mqtt]` with this broker, or the defaults.
pub fn set_mqtt_url(cfg: &mut PipelineConfig, url: &str) {
    match &mut cfg.output.mqtt {
        Some(m) => m.url = url.to_string(),
        None => cfg.output.mqtt = Some(MqttConfig::new(url)),
    }
}

/// The MQTT publisher of `[output.mqtt]` (connected, or queuing for an unreachable broker) and the
/// observers of a run holding it. A refused connection or a TLS failure is an error here, before
/// any frame.
pub fn start_mqtt(cfg: &PipelineConfig) -> anyhow::Result<(Option<Arc<MqttPublisher>>, Observers)> {
    let mut observers = Observers::default();
    let Some(m) = &cfg.output.mqtt else {
        return Ok((None, observers));
    };
    let publisher = MqttPublisher::start(m)?;
    observers.push(publisher.clone());
    Ok((Some(publisher), observers))
}

/// Delivers what is still queued (waiting a bounded time), publishes `offline` and reports.
pub fn close_mqtt(publisher: Option<Arc<MqttPublisher>>) {
    if let Some(p) = publisher {
        let r = p.close(maskstream::pipeline::mqtt::CLOSE_WAIT);
        eprintln!(
            "mqtt: {} messages delivered to {}{}",
            r.delivered,
            p.url(),
            if r.undelivered > 0 || r.dropped > 0 {
                format!(
                    "; {} not delivered, {} dropped (buffer full)",
                    r.undelivered, r.dropped
                )
            } else {
                String::new()
            }
        );
    }
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
    let (mqtt, observers) = start_mqtt(&cfg)?;
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
        observers,
        ..Default::default()
    };
    // the API first: health answers while the engine loads, and a taken port fails before it
    let gauge = mqtt.clone().map(|m| m as Arc<dyn QueueGauge>);
    let (control, commands) = Control::channel();
    let http = start_http(&cfg, Some(control), gauge)?;
    if let Some((_, hub)) = &http {
        ctx.observers.push(hub.clone());
        ctx.control = Some(commands);
    }
    let result = pipeline::run(&cfg, ctx);
    close_mqtt(mqtt);
    drop(http);
    let summary = result.context("running the pipeline")?;
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
