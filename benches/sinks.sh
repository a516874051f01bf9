#!/usr/bin/env bash
# Forwarding throughput (issue 4): `weir run --oneshot` over 1,000,000 generated lines with the
# default pipeline and a Loki or Elasticsearch sink pointed at a local receiver
# (benches/receiver.py), against the metrics-only run in the same command. `--oneshot` exits
# only once every line is delivered, so wall time covers the whole delivery.
# Then: RSS while the receiver is down for 60 s (memory buffer, weir blocks on backpressure).
# Usage: benches/sinks.sh [LINES] [OUTAGE_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
outage=${2:-60}
cargo build --release --quiet
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
$weir generate demo-logs --count "$lines" --seed 4 --output "$dir/c.jsonl"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
run() { local t0; t0=$(now); "$weir" run --oneshot --progress never "$@" "$dir/c.jsonl" > /dev/null 2>"$dir/err" || { cat "$dir/err"; exit 1; }; echo "$(now) - $t0" | bc; }

base=$(run)
printf "%-28s %6.2f s %9.0f lines/s\n" "metrics only" "$base" "$(echo "$lines / $base" | bc -l)"
for kind in loki elasticsearch; do
  p=$(port); python3 benches/receiver.py $kind $p 2>"$dir/$kind.stats" & r=$!; sleep 0.5
  t=$(run --$kind http://127.0.0.1:$p)
  kill $r; wait $r 2>/dev/null || true
  printf "%-28s %6.2f s %9.0f lines/s  ratio %.2fx metrics-only  receiver %s\n" "with $kind sink" "$t" \
    "$(echo "$lines / $t" | bc -l)" "$(echo "$t / $base" | bc -l)" "$(cat "$dir/$kind.stats")"
done

# Outage: the receiver is down for $outage s while weir reads the file; sample RSS each second.
[ "$outage" -gt 0 ] || exit 0
p=$(port)
python3 benches/receiver.py down $p "$outage" 2>/dev/null & r=$!
"$weir" run --oneshot --progress never --loki http://127.0.0.1:$p "$dir/c.jsonl" > /dev/null 2>&1 & w=$!
peak=0; samples=""
for s in $(seq 1 "$outage"); do
  sleep 1
  rss=$(awk '/VmRSS/ {print $2}' /proc/$w/status 2>/dev/null || echo 0)
  [ "$rss" -gt "$peak" ] && peak=$rss
  [ $((s % 10)) -eq 0 ] && samples="$samples ${s}s:$((rss / 1024))MB"
done
wait $w; kill $r 2>/dev/null || true
echo "RSS during a ${outage}s Loki outage (memory buffer):$samples  peak $((peak / 1024)) MB; all lines delivered after it: exit 0"
