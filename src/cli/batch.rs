use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::{self, is_video_file, RunContext};

use super::progress::{overall_style, Bars};

#[derive(clap::Args)]
pub struct Args {
    /// A folder of videos, or a glob such as "videos/*.mp4".
    pub input: String,
    /// Where <stem>.mp4 and <stem>.jsonl go.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Only write JSON Lines (no annotated videos).
    #[arg(long)]
    pub json_only: bool,
    #[command(flatten)]
    pub model: super::ModelFlags,
    /// Pipeline file whose engine, inference, overlay and queue settings apply to every file.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
}

pub fn list_inputs(input: &str) -> anyhow::Result<Vec<PathBuf>> {
    let p = Path::new(input);
    let mut files: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(p)
            .with_context(|| format!("{input}: cannot list the folder"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_video_file(p))
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
    Ok(files)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let files = list_inputs(&args.input)?;
    let mut base = match &args.pipeline {
        Some(p) => PipelineConfig::load(p)?,
        None => PipelineConfig {
            engine: super::default_engine(),
            ..Default::default()
        },
    };
    args.model.apply(&mut base);
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let stop = super::run::install_signal_handler();
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi
        .add(ProgressBar::new(files.len() as u64))
        .with_style(overall_style());
    overall.set_prefix("batch");
    let mut failures = Vec::new();
    let mut frames = 0u64;
    let started = std::time::Instant::now();
    for file in &files {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let stem = file
            .file_stem()
            .map_or("video".into(), |s| s.to_string_lossy().into_owned());
        let mut cfg = base.clone();
        cfg.sources = vec![SourceConfig {
            uri: file.display().to_string(),
            name: Some(stem.clone()),
            max_frames: None,
        }];
        cfg.output.video = (!args.json_only).then(|| {
            args.out_dir
                .join(format!("{stem}.mp4"))
                .display()
                .to_string()
        });
        cfg.output.jsonl = Some(
            args.out_dir
                .join(format!("{stem}.jsonl"))
                .display()
                .to_string(),
        );
        // events beside the JSON Lines when the pipeline file asks for them
        cfg.output.events = base.output.events.as_ref().map(|_| {
            args.out_dir
                .join(format!("{stem}.events.jsonl"))
                .display()
                .to_string()
        });
        cfg.output.rtsp = None;
        cfg.output.preview = false;
        let ctx = RunContext {
            stop: stop.clone(),
            progress: Box::new(Bars::new(multi.clone(), Some(overall.clone()))),
            on_rtsp_ready: None,
        };
        match pipeline::run(&cfg, ctx) {
            Ok(summary) => {
                frames += summary.frames;
                for s in summary.failed() {
                    failures.push(format!(
                        "{}: {}",
                        file.display(),
                        s.error.as_deref().unwrap_or("failed")
                    ));
                }
            }
            Err(e) => {
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
        overall.inc(1);
    }
    overall.finish();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "batch: {} files, {frames} frames in {secs:.1} s ({:.1} frames/s), {} failed",
        files.len(),
        frames as f64 / secs.max(1e-9),
        failures.len()
    );
    for f in &failures {
        eprintln!("error: {f}");
    }
    if !failures.is_empty() {
        bail!("{} of {} files failed", failures.len(), files.len());
    }
    Ok(())
}
