#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, format and lint checks, then every test (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
cargo fmt --all --check
# --workspace: the root package and the GStreamer plugin (gst/)
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
