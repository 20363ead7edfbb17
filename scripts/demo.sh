#!/usr/bin/env bash
# The demo, from a fresh clone: set-up, release build, then the bundled sample video through the bundled
# engine -> out/demo.mp4 (annotated) + out/demo.jsonl. Extra arguments go to `maskstream run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
./target/release/maskstream run pipelines/demo.toml "$@"
echo "demo: wrote out/demo.mp4 and out/demo.jsonl"
