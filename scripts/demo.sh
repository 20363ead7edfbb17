#!/usr/bin/env bash
# The demo, from a fresh clone: set-up, release build, then the bundled sample images through the bundled
# engine -> annotated PNGs in out/detect/ + out/detect.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
./target/release/maskstream detect tests/fixtures/detect/*/image.png --out-dir out/detect --json out/detect.jsonl "$@"
