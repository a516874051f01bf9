#!/usr/bin/env bash
# Cost of `weir tap` (issue 6) to the pipeline it watches: a live `weir run` (not --oneshot:
# taps need the HTTP server) reads generated lines from stdin until its end, in the same command:
#   1. nobody taps (the baseline),
#   2. one tap, no filter, at its highest rate (1000 events/s),
#   3. one tap with a filter (`level == "ERROR" && component == "EventBus"`), rate 1000,
#   4. sixteen taps (the most weir accepts), no filter, rate 1000 each.
# Each run's time goes from the first line written to weir's exit (it drains and exits at the
# end of stdin); every tap is connected (weir_taps_active) before the first line is written.
# Usage: benches/tap.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
cargo build --release --quiet
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
$weir generate demo-logs --count "$lines" --seed 6 --output "$dir/c.jsonl"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
taps_active() { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '/^weir_taps_active /{print $2}'; }

# run TAPS [FILTER]: seconds from the first line to weir's exit; tapped events in $dir/tapped.
run() {
  local taps=$1 filter=${2:-} p a t0 i
  p=$(port); a=$(port)
  rm -f "$dir/in" "$dir"/tap.*; mkfifo "$dir/in"
  "$weir" run --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$a" < "$dir/in" > /dev/null 2> "$dir/err" &
  local w=$!
  exec 3> "$dir/in"   # weir starts once the FIFO has a writer
  until curl -fsS "http://127.0.0.1:$p/health" > /dev/null 2>&1; do sleep 0.05; done
  for ((i = 0; i < taps; i++)); do
    if [ -n "$filter" ]; then
      "$weir" tap --addr "127.0.0.1:$a" --rate 1000 --filter "$filter" > "$dir/tap.$i" 2>/dev/null 3>&- &
    else
      "$weir" tap --addr "127.0.0.1:$a" --rate 1000 > "$dir/tap.$i" 2>/dev/null 3>&- &
    fi
  done
  until [ "$(taps_active "$p")" = "$taps" ]; do sleep 0.05; done
  t0=$(now)
  cat "$dir/c.jsonl" >&3
  exec 3>&-
  wait $w || { cat "$dir/err"; exit 1; }
  echo "$(now) - $t0" | bc
  wait  # the taps end with weir
  cat "$dir"/tap.* 2>/dev/null | grep -c '"event"' > "$dir/tapped" || true
}
report() { printf "%-44s %6.2f s %9.0f lines/s  ratio %.2fx baseline  %s\n" "$1" "$2" "$(echo "$lines / $2" | bc -l)" "$(echo "$2 / $base" | bc -l)" "$3"; }

base=$(run 0)
report "no tap (baseline)" "$base" ""
t=$(run 1); report "1 tap, no filter, rate 1000" "$t" "events tapped: $(cat "$dir/tapped")"
t=$(run 1 'level == "ERROR" && component == "EventBus"')
report "1 tap, filtered, rate 1000" "$t" "events tapped: $(cat "$dir/tapped")"
t=$(run 16); report "16 taps, no filter, rate 1000 each" "$t" "events tapped: $(cat "$dir/tapped")"
