use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::outputs::OutputPlan;
use maskstream::pipeline::{self, is_video_file, RunContext};

use super::progress::{overall_style, Bars};

#[derive(clap::Args)]
pub struct Args {
    /// A folder of videos, or a glob such as "videos/*.mp4".
    pub input: String,
    /// Where the outputs go: for an input <sub>/<file> (its path below the folder or the glob's
    /// fixed part), <out-dir>/<sub>/<file>.jsonl and <out-dir>/<sub>/<file>.annotated.mp4.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Replace outputs that already exist (inputs are never replaced).
    #[arg(long)]
    pub overwrite: bool,
    /// Process only shard K of N (K from 0): files are assigned by a stable hash of their path below
    /// the input folder, so N machines (Kubernetes indexed jobs, Slurm arrays) given the same input
    /// cover every file exactly once.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(u64, u64)>,
    /// Only write JSON Lines (no annotated videos).
    #[arg(long)]
    pub json_only: bool,
    #[command(flatten)]
    pub model: super::ModelFlags,
    /// HTTP API (metrics, health, live page) on PORT (127.0.0.1) or ADDR:PORT while the batch runs.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<String>,
    /// Pipeline file whose engine, inference, overlay and queue settings apply to every file.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Publish every file's events (and counts) to an MQTT broker: mqtt://HOST:PORT or
    /// mqtts://HOST:PORT (replaces the pipeline file's [output.mqtt] url; its other keys apply); the
    /// source name is the file's stem.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
}

/// The suffix of annotated videos: a folder listing skips them, so a batch whose outputs go next to
/// its inputs does not take yesterday's results for new inputs.
pub const ANNOTATED_SUFFIX: &str = ".annotated.mp4";

/// The input files and the folder their output names are taken relative to.
pub fn list_inputs(input: &str) -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    let p = Path::new(input);
    let mut files: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(p)
            .with_context(|| format!("{input}: cannot list the folder"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_video_file(p) && !is_annotated(p))
            .collect()
    } else if input.contains(['*', '?', '[']) {
        glob::glob(input)
            .with_context(|| format!("{input}: bad glob pattern"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect()
    } else if p.exists() {
        vec![p.to_path_buf()]
    } else {
        bail!("{input}: no such file or folder");
    };
    files.sort();
    if files.is_empty() {
        bail!("{input}: no video files found");
    }
    Ok((files, base_dir(input)))
}

fn is_annotated(p: &Path) -> bool {
    p.to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(ANNOTATED_SUFFIX)
}

/// The folder output names are relative to: the folder itself, a glob's part before its first
/// wildcard, or a file's folder.
fn base_dir(input: &str) -> PathBuf {
    let p = Path::new(input);
    if p.is_dir() {
        return p.to_path_buf();
    }
    let mut base = PathBuf::new();
    for c in p.components() {
        if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
            return base;
        }
        base.push(c);
    }
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Output paths of one input: (JSON Lines, annotated video, events). Distinct inputs never share
/// them: the sub-path and the whole file name (extension included) are kept.
pub fn output_paths(file: &Path, base: &Path, out_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let rel = file.strip_prefix(base).unwrap_or(file);
    // an absolute or upward path (a glob like ../x/*.mp4) keeps only its normal parts
    let rel: PathBuf = rel
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let with = |suffix: &str| {
        let mut name = rel.clone().into_os_string();
        name.push(suffix);
        out_dir.join(name)
    };
    (
        with(".jsonl"),
        with(ANNOTATED_SUFFIX),
        with(".events.jsonl"),
    )
}

fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?}: expected K/N with 0 <= K < N, e.g. 0/4");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (k, n): (u64, u64) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The shard a file belongs to: sha256 of its path below the input folder (stable across machines,
/// runs and Rust versions, unlike std's hasher), modulo N.
pub fn shard_of(file: &Path, base: &Path, n: u64) -> u64 {
    use sha2::Digest;
    let rel = file.strip_prefix(base).unwrap_or(file);
    let digest = sha2::Sha256::digest(rel.to_string_lossy().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % n
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (mut files, base_dir) = list_inputs(&args.input)?;
    if let Some((k, n)) = args.shard {
        let all = files.len();
        files.retain(|f| shard_of(f, &base_dir, n) == k);
        eprintln!("batch: shard {k}/{n}: {} of {all} files", files.len());
        if files.is_empty() {
            return Ok(());
        }
    }
    let base = base_config(&args)?;
    let configs: Vec<PipelineConfig> = files
        .iter()
        .map(|f| file_config(&base, f, &base_dir, &args))
        .collect();
    check_outputs(&base, &configs, &args)?;
    // one connection for the whole batch; a refused one fails before any file is read
    let (mqtt, mut observers) = super::run::start_mqtt(&base)?;
    // metrics, health and the live page of the files as they go (no streams added: control is None)
    let gauge = mqtt
        .clone()
        .map(|m| m as Arc<dyn maskstream::http::QueueGauge>);
    let http = super::run::start_http(&base, None, gauge)?;
    if let Some((_, hub)) = &http {
        observers.push(hub.clone());
    }
    let loading = std::time::Instant::now();
    let loaded = pipeline::load_model(&base)
        .with_context(|| format!("loading engine {}", base.engine.display()));
    let mut model = match loaded {
        Ok(m) => Some(m),
        Err(e) => {
            super::run::close_mqtt(mqtt);
            return Err(e);
        }
    };
    eprintln!(
        "batch: model ready in {:.2} s, shared by {} files",
        loading.elapsed().as_secs_f64(),
        files.len()
    );
    let stop = super::run::install_signal_handler();
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi
        .add(ProgressBar::new(files.len() as u64))
        .with_style(overall_style());
    overall.set_prefix("batch");
    let mut failures = Vec::new();
    let mut frames = 0u64;
    let started = std::time::Instant::now();
    for (file, cfg) in files.iter().zip(&configs) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(m) = model.take() else {
            break;
        };
        let ctx = RunContext {
            stop: stop.clone(),
            progress: Box::new(Bars::new(multi.clone(), Some(overall.clone()))),
            on_rtsp_ready: None,
            observers: observers.clone(),
            control: None,
        };
        let result = pipeline::run_with(cfg, m, ctx);
        record_run(result, file, &base, &mut model, &mut failures, &mut frames);
        overall.inc(1);
    }
    overall.finish();
    let _ = model;
    super::run::close_mqtt(mqtt);
    drop(http);
    report(files.len(), frames, started, &failures)
}

/// The pipeline configuration every file starts from: `--pipeline` or the defaults, with the
/// model options and `--overwrite` applied.
fn base_config(args: &Args) -> anyhow::Result<PipelineConfig> {
    let mut base = match &args.pipeline {
        Some(p) => PipelineConfig::load(p)?,
        None => PipelineConfig {
            engine: super::default_engine(),
            ..Default::default()
        },
    };
    args.model.apply(&mut base);
    if args.http.is_some() {
        base.http.listen = args.http.clone();
    }
    base.output.overwrite |= args.overwrite;
    if let Some(url) = &args.mqtt {
        super::run::set_mqtt_url(&mut base, url);
    }
    Ok(base)
}

/// Every input against every output of the whole batch, before any file is touched; then the
/// output directory.
fn check_outputs(
    base: &PipelineConfig,
    configs: &[PipelineConfig],
    args: &Args,
) -> anyhow::Result<()> {
    let mut plan = OutputPlan::default();
    for cfg in configs {
        pipeline::plan_outputs(cfg, &mut plan)?;
    }
    plan.check(base.output.overwrite)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    Ok(())
}

/// Counts one file's frames and failures; keeps the model it handed back, or loads it anew.
fn record_run(
    result: maskstream::Result<(pipeline::stats::Summary, pipeline::Models)>,
    file: &Path,
    base: &PipelineConfig,
    model: &mut Option<pipeline::Models>,
    failures: &mut Vec<String>,
    frames: &mut u64,
) {
    match result {
        Ok((summary, m)) => {
            *model = Some(m);
            *frames += summary.frames;
            for s in summary.failed() {
                failures.push(format!(
                    "{}: {}",
                    file.display(),
                    s.error.as_deref().unwrap_or("failed")
                ));
            }
        }
        Err(e) => {
            // the model went down with the run (it failed before handing it back): load it anew
            match pipeline::load_model(base) {
                Ok(m) => *model = Some(m),
                Err(le) => failures.push(format!("reloading the engine: {le}")),
            }
            // most errors already name the file; name it once
            let e = format!("{e}");
            let shown = file.display().to_string();
            failures.push(if e.contains(&shown) {
                e
            } else {
                format!("{shown}: {e}")
            });
        }
    }
}

/// The closing line, each failure, and an error when any file failed.
fn report(
    files: usize,
    frames: u64,
    started: std::time::Instant,
    failures: &[String],
) -> anyhow::Result<()> {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "batch: {} files, {frames} frames in {secs:.1} s ({:.1} frames/s), {} failed",
        files,
        frames as f64 / secs.max(1e-9),
        failures.len()
    );
    for f in failures {
        eprintln!("error: {f}");
    }
    if !failures.is_empty() {
        bail!("{} of {} files failed", failures.len(), files);
    }
    Ok(())
}

/// The pipeline of one input file: the batch's settings, this file as the only source, its own
/// outputs.
fn file_config(base: &PipelineConfig, file: &Path, base_dir: &Path, args: &Args) -> PipelineConfig {
    let (jsonl, video, events) = output_paths(file, base_dir, &args.out_dir);
    let mut cfg = base.clone();
    let name = file
        .file_stem()
        .map_or("video".into(), |s| s.to_string_lossy().into_owned());
    cfg.sources = vec![SourceConfig {
        name: Some(name),
        ..SourceConfig::new(file.display().to_string())
    }];
    cfg.output.video = (!args.json_only).then(|| video.display().to_string());
    cfg.output.jsonl = Some(jsonl.display().to_string());
    // events beside the JSON Lines when the pipeline file asks for them
    cfg.output.events = base
        .output
        .events
        .as_ref()
        .map(|_| events.display().to_string());
    cfg.output.rtsp = None;
    cfg.output.preview = false;
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_inputs_get_distinct_outputs() {
        let out = Path::new("out");
        let a = output_paths(Path::new("v/cam1/x.mp4"), Path::new("v"), out);
        let b = output_paths(Path::new("v/cam2/x.mp4"), Path::new("v"), out);
        let c = output_paths(Path::new("v/cam1/x.mkv"), Path::new("v"), out);
        assert_eq!(a.0, Path::new("out/cam1/x.mp4.jsonl"));
        assert_eq!(a.1, Path::new("out/cam1/x.mp4.annotated.mp4"));
        assert!(a != b && a != c && b != c);
        assert_eq!(base_dir("v/cam*/x.mp4"), Path::new("v"));
        assert_eq!(base_dir("*.mp4"), Path::new(""));
    }

    #[test]
    fn shards_cover_every_file_once() {
        let base = Path::new("/videos");
        let files: Vec<PathBuf> = (0..200)
            .map(|i| base.join(format!("cam{}/clip{i}.mp4", i % 7)))
            .collect();
        for n in [1, 2, 3, 8] {
            let mut seen = vec![0u32; files.len()];
            let mut sizes = Vec::new();
            for k in 0..n {
                let mine: Vec<usize> = (0..files.len())
                    .filter(|&i| shard_of(&files[i], base, n) == k)
                    .collect();
                sizes.push(mine.len());
                for i in mine {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "n={n}");
            // a hash, not a round-robin: still no shard is left nearly empty
            assert!(
                sizes.iter().all(|&s| s >= 200 / n as usize / 2),
                "n={n}: {sizes:?}"
            );
        }
        // the same file lands in the same shard wherever the folder is mounted
        assert_eq!(
            shard_of(Path::new("/a/cam1/x.mp4"), Path::new("/a"), 5),
            shard_of(Path::new("/mnt/b/cam1/x.mp4"), Path::new("/mnt/b"), 5)
        );
        assert!(parse_shard("3/3").is_err() && parse_shard("1/0").is_err());
        assert_eq!(parse_shard("2/4"), Ok((2, 4)));
    }
}
