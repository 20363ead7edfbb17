//! Subcommands of the binary; each reports errors with context (anyhow).

pub mod batch;
pub mod bench;
pub mod bench_streams;
pub mod detect;
pub mod inspect;
pub mod progress;
pub mod run;

use std::path::PathBuf;

/// The bundled engine: `engines/shapes` next to the working directory, or in the source tree.
pub fn default_engine() -> PathBuf {
    let local = PathBuf::from("engines/shapes");
    if local.join("manifest.toml").is_file() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engines/shapes")
}

/// Engine, backend and threshold flags shared by `run` and `batch`; each overrides the pipeline file.
#[derive(clap::Args)]
pub struct ModelFlags {
    #[arg(long)]
    pub engine: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub backend: Option<maskstream::BackendKind>,
    /// FP32 or INT8 graphs; auto: the engine's CPU default (INT8 when it has one) on CPU, FP32 on GPUs.
    #[arg(long, value_enum)]
    pub precision: Option<maskstream::Precision>,
    #[arg(long)]
    pub score_threshold: Option<f32>,
    /// Model calls in flight at once, each on its own copy of the model with an equal share of the
    /// threads (`[inference] workers`; 0: automatic, 2 on the CPU; 1: one frame at a time, the
    /// lowest latency).
    #[arg(long)]
    pub workers: Option<usize>,
}

impl ModelFlags {
    pub fn apply(&self, cfg: &mut maskstream::pipeline::config::PipelineConfig) {
        if let Some(e) = &self.engine {
            cfg.engine = e.clone();
        }
        if let Some(b) = self.backend {
            cfg.backend = b;
        }
        if let Some(p) = self.precision {
            cfg.precision = p;
        }
        if let Some(s) = self.score_threshold {
            cfg.inference.score_threshold = s;
        }
        if let Some(w) = self.workers {
            cfg.inference.workers = w;
        }
    }
}
