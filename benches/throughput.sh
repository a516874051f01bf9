#!/usr/bin/env bash
# End-to-end throughput of `weir run --oneshot` on a generated 1,000,000-line file, against
# `cat FILE > /dev/null` in the same run (the machine is shared and noisy: compare the ratio).
# Usage: benches/throughput.sh [LINES] [RUNS]     (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
runs=${2:-3}
cargo build --release --quiet
weir=target/release/weir
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
corpus=$dir/corpus.jsonl
$weir generate demo-logs --count "$lines" --seed 42 --malformed-rate 0.01 --output "$corpus"
bytes=$(stat -c %s "$corpus")
cat "$corpus" > /dev/null # warm the page cache

best() { sort -g | head -1; }
time_cmd() { # prints wall seconds and peak RSS (KiB) of one run
  /usr/bin/time -f '%e %M' -o "$dir/t" "$@" > /dev/null 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
  cat "$dir/t"
}
cat_s=(); wc_s=(); weir_s=(); weir_rss=()
for _ in $(seq "$runs"); do
  read -r s _ < <(time_cmd cat "$corpus"); cat_s+=("$s")
  read -r s _ < <(time_cmd wc -l "$corpus"); wc_s+=("$s")
  read -r s rss < <(time_cmd "$weir" run --oneshot --progress never "$corpus"); weir_s+=("$s"); weir_rss+=("$rss")
done
c=$(printf '%s\n' "${cat_s[@]}" | best)
k=$(printf '%s\n' "${wc_s[@]}" | best)
w=$(printf '%s\n' "${weir_s[@]}" | best)
r=$(printf '%s\n' "${weir_rss[@]}" | sort -g | tail -1)
awk -v l="$lines" -v b="$bytes" -v c="$c" -v k="$k" -v w="$w" -v r="$r" 'BEGIN {
  printf "corpus: %d lines, %.1f MB\n", l, b / 1e6
  printf "cat > /dev/null:       %6.2f s\n", c
  printf "wc -l (reads every byte): %6.2f s\n", k
  printf "weir run --oneshot:    %6.2f s  %9.0f lines/s  peak RSS %.1f MB\n", w, l / w, r / 1024
  if (c > 0) printf "ratio weir / cat:      %6.1f x\n", w / c
  if (k > 0) printf "ratio weir / wc -l:    %6.1f x\n", w / k
}'
