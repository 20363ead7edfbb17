//! Subcommands of the binary; each reports errors with context (anyhow).

pub mod batch;
pub mod bench;
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
