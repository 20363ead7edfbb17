//! Typed errors of the library. Every variant names what was wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },

    // The io::Error is part of the message, not a `source`: a chain printer would repeat it.
    #[error("{path}: cannot {op}: {error}")]
    Io {
        path: PathBuf,
        /// What was being done: "read", "write", "create the folder" ...
        op: &'static str,
        error: std::io::Error,
    },

    #[error("{path}: sha256 is {actual}, the manifest says {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("ONNX Runtime library not found ({tried}). Run `bash scripts/setup.sh` to fetch it, or set MASKSTREAM_ORT_LIB to the path of libonnxruntime.so")]
    RuntimeMissing { tried: String },

    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    #[error("{graph}: {message}")]
    Graph { graph: String, message: String },

    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },

    #[error("invalid input: {0}")]
    Input(String),

    #[error("{0}")]
    Config(String),

    #[error("{0}")]
    Pipeline(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn manifest(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Manifest {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Reading `path` failed.
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::io_op(path, "read", error)
    }

    /// `op` ("write", "create the folder" ...) on `path` failed.
    pub(crate) fn io_op(path: impl Into<PathBuf>, op: &'static str, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            error,
        }
    }

    pub(crate) fn graph(graph: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Graph {
            graph: graph.into(),
            message: message.to_string(),
        }
    }
}

impl<T> From<ort::Error<T>> for Error {
    // ort's builder errors carry the builder and are neither Send nor Sync: keep only the message.
    fn from(e: ort::Error<T>) -> Self {
        Error::Runtime(e.to_string())
    }
}
