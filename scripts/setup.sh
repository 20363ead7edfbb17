#!/usr/bin/env bash
# Installs what maskstream needs on Debian bookworm, idempotently (fast when everything is present):
#   - Debian packages: GStreamer (dev headers for gstreamer-rs, plugins, RTSP server), Xvfb for the
#     preview test, Prometheus (promtool checks the metrics), Chromium (loads the live page),
#     mosquitto (the MQTT tests' broker and client), python3-gi + GStreamer typelibs (the plugin's
#     Python test);
#   - the ONNX Runtime shared library, from the pinned `onnxruntime` PyPI wheel (sha256-checked), into
#     .cache/onnxruntime/<version>/ (git-ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

APT_PACKAGES=(
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-x xvfb xauth glib-networking openssl
  gstreamer1.0-plugins-base-apps mosquitto mosquitto-clients
  prometheus chromium
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
dest="$root/.cache/onnxruntime/$ORT_VERSION"
if [ ! -f "$dest/libonnxruntime.so.$ORT_VERSION" ]; then
  echo "setup: fetching ONNX Runtime $ORT_VERSION (PyPI wheel)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  py=python3
  if ! $py -m pip --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 -d "$tmp" "onnxruntime==$ORT_VERSION"
  echo "$ORT_WHEEL_SHA256  $tmp/$ORT_WHEEL" | sha256sum -c --quiet -
  mkdir -p "$dest.partial"
  $py - "$tmp/$ORT_WHEEL" "$dest.partial" "$ORT_VERSION" <<'PY'
import os, sys, zipfile
wheel, out, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in (f"libonnxruntime.so.{version}", "libonnxruntime_providers_shared.so"):
        with z.open(f"onnxruntime/capi/{name}") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
PY
  rm -rf "$dest" && mv "$dest.partial" "$dest"
fi
