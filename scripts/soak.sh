#!/usr/bin/env bash
# Soak test (not part of CI): runs `maskstream run` on a live test pattern for a while (no outputs, or
# with SOAK_OUTPUTS=1 all of them: fragmented MP4, JSON Lines, RTSP served to a connected viewer),
# samples the process's RSS, open file descriptors and threads every few seconds into a CSV, then
# stops it with SIGINT (which must end it cleanly) and prints the growth after the warm-up.
#
#   bash scripts/soak.sh [DURATION_S] [CSV]          defaults: 600 s, out/soak.csv
#
# Environment:
#   SOAK_INPUT      source URI                     (default test://ball?fps=30)
#   SOAK_INTERVAL   seconds between samples        (default 10)
#   SOAK_WARMUP     seconds before the baseline    (default 60)
#   SOAK_ARGS       more `maskstream run` flags    (default --backend auto)
#   SOAK_OUTPUTS    1: write out/soak.mp4 + out/soak.jsonl and serve RTSP on 127.0.0.1 with a viewer
#                   (gst-launch-1.0 rtspsrc ... fakesink) attached for the whole run
#   MASKSTREAM      the binary to run              (default target/release/maskstream, built if missing)
#   SOAK_MAX_RSS_GROWTH_MB / SOAK_MAX_FD_GROWTH / SOAK_MAX_THREAD_GROWTH
#                   growth after the warm-up that fails the soak (defaults 5 / 2 / 4)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

duration=${1:-600}
csv=${2:-out/soak.csv}
input=${SOAK_INPUT:-test://ball?fps=30}
interval=${SOAK_INTERVAL:-10}
warmup=${SOAK_WARMUP:-60}
read -r -a extra <<< "${SOAK_ARGS:---backend auto}"
max_rss=${SOAK_MAX_RSS_GROWTH_MB:-5}
max_fd=${SOAK_MAX_FD_GROWTH:-2}
max_thr=${SOAK_MAX_THREAD_GROWTH:-4}

bin=${MASKSTREAM:-target/release/maskstream}
if [ ! -x "$bin" ]; then
  echo "soak: building $bin"
  cargo build --release --locked
fi
if [ "$duration" -le "$warmup" ]; then
  echo "soak: the duration ($duration s) must exceed the warm-up ($warmup s)" >&2
  exit 2
fi

mkdir -p "$(dirname "$csv")"
log="${csv%.csv}.log"
viewer_pid=""
if [ "${SOAK_OUTPUTS:-0}" = 1 ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out_dir=$(dirname "$csv")
  rm -f "$out_dir/soak.mp4" "$out_dir/soak.jsonl"
  extra+=(--output "$out_dir/soak.mp4" --json "$out_dir/soak.jsonl" --serve "rtsp://127.0.0.1:$port/soak")
fi
"$bin" run --input "$input" "${extra[@]}" 2> "$log" &
pid=$!
cleanup() { kill -KILL "$pid" 2>/dev/null || true; [ -n "$viewer_pid" ] && kill -KILL "$viewer_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [ "${SOAK_OUTPUTS:-0}" = 1 ]; then
  sleep 5
  gst-launch-1.0 -q rtspsrc location="rtsp://127.0.0.1:$port/soak" latency=0 ! decodebin ! fakesink \
    > "${csv%.csv}.viewer.log" 2>&1 &
  viewer_pid=$!
  echo "soak: all outputs on; viewer pid $viewer_pid on rtsp://127.0.0.1:$port/soak"
fi

sample() { # t_s,rss_kb,fds,threads of $pid, or nothing when it is gone
  local status
  status=$(cat "/proc/$pid/status" 2>/dev/null) || return 1
  local rss threads fds
  rss=$(awk '/^VmRSS:/ {print $2}' <<< "$status")
  threads=$(awk '/^Threads:/ {print $2}' <<< "$status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "$1,$rss,$fds,$threads"
}

echo "t_s,rss_kb,fds,threads" > "$csv"
echo "soak: pid $pid, $input, $duration s, a sample every $interval s into $csv (log: $log)"
start=$(date +%s)
while :; do
  now=$(( $(date +%s) - start ))
  if ! line=$(sample "$now"); then
    echo "soak: maskstream exited early; last lines of its log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  echo "$line" >> "$csv"
  [ "$now" -ge "$duration" ] && break
  sleep "$interval"
done

kill -INT "$pid"
status=0
wait "$pid" || status=$?
[ -n "$viewer_pid" ] && kill -KILL "$viewer_pid" 2>/dev/null || true
trap - EXIT
if [ "$status" -ne 0 ]; then
  echo "soak: maskstream exited with $status after SIGINT; last lines of its log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
grep -E "frames in|^source " "$log" || true

# growth from the first sample at or after the warm-up to the last one, and the trend (least-squares
# slope over the samples after the warm-up: less sensitive to the allocator's ups and downs)
awk -F, -v warmup="$warmup" -v max_rss="$max_rss" -v max_fd="$max_fd" -v max_thr="$max_thr" '
  NR == 1 { next }
  !base && $1 >= warmup { base = 1; t0 = $1; r0 = $2; f0 = $3; h0 = $4; rmax = $2 }
  base {
    t1 = $1; r1 = $2; f1 = $3; h1 = $4; if ($2 > rmax) rmax = $2
    n++; sx += $1; sy += $2 / 1024; sxx += $1 * $1; sxy += $1 * $2 / 1024
  }
  END {
    if (!base) { print "soak: no sample after the warm-up"; exit 1 }
    span = t1 - t0
    drss = (r1 - r0) / 1024
    printf "soak: after %d s of warm-up, over %d s (%d samples): RSS %.1f -> %.1f MiB (%+.1f MiB, peak %.1f MiB",
      t0, span, n, r0 / 1024, r1 / 1024, drss, rmax / 1024
    den = n * sxx - sx * sx
    # a trend over a few minutes says little (the allocator moves by tens of MiB): 5 minutes at least
    if (n >= 3 && den > 0 && span >= 300) printf ", trend %+.1f MiB/h", (n * sxy - sx * sy) / den * 3600
    printf "); fds %d -> %d (%+d); threads %d -> %d (%+d)\n", f0, f1, f1 - f0, h0, h1, h1 - h0
    bad = 0
    if (drss > max_rss) { print "soak: FAIL: RSS grew more than " max_rss " MiB"; bad = 1 }
    if (f1 - f0 > max_fd) { print "soak: FAIL: open files grew by more than " max_fd; bad = 1 }
    if (h1 - h0 > max_thr) { print "soak: FAIL: threads grew by more than " max_thr; bad = 1 }
    if (!bad) print "soak: OK"
    exit bad
  }' "$csv"
