#!/usr/bin/env bash
# OTLP sink throughput (issue 14): `weir run --oneshot` over generated agent logs (default
# 1,000,000 lines), forwarding to a local receiver (benches/receiver.py, which discards what it
# gets), in one command: metrics only; the Loki sink; the OTLP sink with logs only (the default
# pipeline has no spans); the OTLP sink with spans and logs (agents.toml + the [[spans]] of
# pipelines/traces.toml). `--oneshot` exits only once every line is delivered, so the wall
# time covers delivery.
# Usage: benches/otlp.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
cargo build --release --quiet
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
$weir generate demo-logs --count "$lines" --seed 4 --output "$dir/c.jsonl"
cat pipelines/agents.toml pipelines/traces.toml > "$dir/spans.toml"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
run() { local t0; t0=$(now); "$weir" run --oneshot --progress never "$@" "$dir/c.jsonl" > /dev/null 2>"$dir/err" || { cat "$dir/err"; exit 1; }; echo "$(now) - $t0" | bc; }

base=$(run)
printf "%-34s %6.2f s %9.0f lines/s\n" "metrics only" "$base" "$(echo "$lines / $base" | bc -l)"
sink() {
  local label=$1 kind=$2; shift 2
  local p r t
  p=$(port); python3 benches/receiver.py "$kind" "$p" 2>"$dir/stats" & r=$!; sleep 0.5
  t=$(run "$@" "http://127.0.0.1:$p")
  kill $r; wait $r 2>/dev/null || true
  printf "%-34s %6.2f s %9.0f lines/s  ratio %.2fx metrics-only  receiver %s\n" "$label" "$t" \
    "$(echo "$lines / $t" | bc -l)" "$(echo "$t / $base" | bc -l)" "$(cat "$dir/stats")"
}
sink "with loki sink" loki --loki
sink "with otlp sink (logs)" otlp --otlp
sink "with otlp sink (spans + logs)" otlp --config "$dir/spans.toml" --otlp
