#!/usr/bin/env bash
# HTTP API under load: two live test sources, V MJPEG viewers per stream attached the whole time, C
# concurrent scrapers of /metrics and /api/streams; prints scrape latency p50/p99/max and the process'
# RSS over the run. Needs curl.
#   MASKSTREAM=target/release/maskstream bash scripts/http_load.sh [seconds=120] [viewers=2] [scrapers=4]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}; viewers=${2:-2}; scrapers=${3:-4}
bin=${MASKSTREAM:-target/release/maskstream}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
"$bin" run --input test://ball --input test://smpte --http 127.0.0.1:0 ${MS_ARGS:-} 2>"$tmp/err" >/dev/null &
pid=$!
for _ in $(seq 100); do grep -q "http: serving on" "$tmp/err" && break; sleep 0.2; done
addr=$(grep -o "http://127.0.0.1:[0-9]*" "$tmp/err" | head -1)
until curl -sf "$addr/readyz" >/dev/null; do sleep 0.5; done
for s in test-ball test-smpte; do
  for _ in $(seq "$viewers"); do curl -s -N "$addr/api/streams/$s/live.mjpeg" -o /dev/null & done
done
sleep 10
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
rss0=$(rss); echo "RSS after warm-up: $((rss0 / 1024)) MiB ($((viewers * 2)) viewers attached)"
end=$((SECONDS + secs))
scraping=()
for k in $(seq "$scrapers"); do
  ( while [ $SECONDS -lt $end ]; do
      for p in /metrics /api/streams; do
        curl -s -o /dev/null -w "%{time_total}\n" "$addr$p" >> "$tmp/lat.$k"
      done
    done ) &
  scraping+=($!)
done
while [ $SECONDS -lt $end ]; do sleep 10; echo "t=$((secs - (end - SECONDS)))s RSS $(( $(rss) / 1024 )) MiB"; done
wait "${scraping[@]}" 2>/dev/null || true
cat "$tmp"/lat.* | sort -g > "$tmp/all"
n=$(wc -l < "$tmp/all")
pct() { sed -n "$(( ($1 * n + 99) / 100 ))p" "$tmp/all"; }
echo "scrapes: $n in ${secs}s by $scrapers clients; latency p50 $(pct 50)s p99 $(pct 99)s max $(tail -1 "$tmp/all")s"
echo "RSS: $((rss0 / 1024)) MiB -> $(( $(rss) / 1024 )) MiB"
curl -s "$addr/api/streams" | python3 -c 'import json,sys; [print(s["name"], s["state"], s["frames"], "frames", s["dropped"], "dropped") for s in json.load(sys.stdin)]'
