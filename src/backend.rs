//! ONNX Runtime: finding the shared library, one session per graph, execution-provider choice.
//!
//! The library is loaded at run time (`ort` with `load-dynamic`), so the build never needs it. A missing
//! library or GPU is an error or a fallback with a message, never a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::ExecutionProvider;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::engine::Precision;
use crate::error::{Error, Result};

/// Which execution provider runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CUDA when a usable NVIDIA device and CUDA-enabled ONNX Runtime are present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    /// TensorRT EP (FP16, engine + timing caches under the engine's cache/ folder), CUDA as fallback.
    #[value(name = "tensorrt")]
    #[serde(rename = "tensorrt")]
    TensorRt,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::TensorRt => "tensorrt",
        })
    }
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub kind: BackendKind,
    /// Intra-op threads per session; 0 = one per core.
    pub threads: usize,
    /// Let ONNX Runtime's idle intra-op threads spin. Off by default: our own stages (ROIAlign,
    /// paste) run on rayon between the three graphs, and a graph's spinning workers would take the
    /// cores those stages need (see BENCHMARKS.md).
    pub spinning: bool,
    /// ONNX Runtime's CPU memory arena: reuses tensor memory across runs (R50-FPN 9% faster than
    /// without); the model warms it at its largest shapes at load so that it does not grow later.
    pub cpu_arena: bool,
    pub device_id: i32,
    /// Where TensorRT keeps its engine and timing caches.
    pub cache_dir: Option<PathBuf>,
    /// FP32 or INT8 graphs; `Auto` follows the engine's `precision.cpu_default` on CPU.
    pub precision: Precision,
}

impl BackendOptions {
    /// Whether the graphs will run on the CPU (asked for, or no NVIDIA driver for `Auto`).
    pub fn runs_on_cpu(&self) -> bool {
        self.kind == BackendKind::Cpu || (self.kind == BackendKind::Auto && !cuda_driver_present())
    }
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kind: BackendKind::Auto,
            threads: 0,
            spinning: false,
            cpu_arena: true,
            device_id: 0,
            cache_dir: None,
            precision: Precision::Auto,
        }
    }
}

const ORT_ENV: &str = "MASKSTREAM_ORT_LIB";
const ORT_VERSION: &str = "1.31.1";

/// Candidate locations of libonnxruntime.so, in order: env var, the project's cache, system paths.
pub fn runtime_library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(ORT_ENV) {
        out.push(PathBuf::from(p));
        return out;
    }
    let lib = format!("libonnxruntime.so.{ORT_VERSION}");
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/maskstream and target/{debug,release}/deps/test-binary
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for r in roots {
        out.push(r.join(".cache/onnxruntime").join(ORT_VERSION).join(&lib));
    }
    let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(PathBuf::from),
    );
    for d in dirs {
        out.push(d.join(&lib));
        out.push(d.join("libonnxruntime.so"));
    }
    out
}

/// Loads ONNX Runtime once per process and returns its environment.
pub fn environment() -> Result<ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENV.get_or_init(|| {
        let candidates = runtime_library_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(Error::RuntimeMissing {
                tried: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .to_string());
        };
        tracing::debug!(path = %path.display(), "loading ONNX Runtime");
        let builder = ort::init_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
        builder
            .with_name("maskstream")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("ONNX Runtime environment: {e}"))
    })
    .clone()
    .map_err(Error::Runtime)
}

/// True when an NVIDIA driver can be loaded (probing never creates a context, which could panic).
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// What a session was actually built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    TensorRt,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "CPU",
            Provider::Cuda => "CUDA",
            Provider::TensorRt => "TensorRT",
        })
    }
}

/// Builds one session for `model` with the requested provider; falls back (with a warning) where the
/// request is `auto`, errors where a GPU provider was asked for explicitly and cannot be had.
pub fn session(model: &Path, graph: &str, opts: &BackendOptions) -> Result<(Session, Provider)> {
    let env = environment()?;
    let wants_gpu = matches!(opts.kind, BackendKind::Cuda | BackendKind::TensorRt)
        || (opts.kind == BackendKind::Auto && cuda_driver_present());
    if wants_gpu {
        match gpu_session(&env, model, opts) {
            Ok(s) => return Ok(s),
            Err(e) if opts.kind == BackendKind::Auto => {
                tracing::warn!(graph, error = %e, "GPU execution provider unavailable, using CPU");
            }
            Err(e) => return Err(Error::graph(graph, format!("{} backend: {e}", opts.kind))),
        }
    }
    let mut b = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(opts.threads)?
        .with_intra_op_spinning(opts.spinning)?
        .with_execution_providers([ort::ep::CPU::default()
            .with_arena_allocator(opts.cpu_arena)
            .build()])?;
    let s = b
        .commit_from_file(model)
        .map_err(|e| Error::graph(model.display().to_string(), e))?;
    Ok((s, Provider::Cpu))
}

fn gpu_session(
    env: &ort::environment::Environment,
    model: &Path,
    opts: &BackendOptions,
) -> Result<(Session, Provider)> {
    if !cuda_driver_present() {
        return Err(Error::Runtime("no NVIDIA driver (libcuda) found".into()));
    }
    let cuda = ort::ep::CUDA::default().with_device_id(opts.device_id);
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(opts.threads)?;
    let provider = if opts.kind == BackendKind::TensorRt {
        let cache = opts
            .cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("trt-cache"));
        std::fs::create_dir_all(&cache)
            .map_err(|e| Error::io_op(&cache, "create the folder", e))?;
        let cache = cache.display().to_string();
        let trt = ort::ep::TensorRT::default()
            .with_device_id(opts.device_id)
            .with_fp16(true)
            .with_engine_cache(true)
            .with_engine_cache_path(&cache)
            .with_timing_cache(true)
            .with_timing_cache_path(&cache);
        trt.register(&mut b)?;
        Provider::TensorRt
    } else {
        Provider::Cuda
    };
    cuda.register(&mut b)?;
    let s = b
        .commit_from_file(model)
        .map_err(|e| Error::graph(model.display().to_string(), e))?;
    Ok((s, provider))
}
