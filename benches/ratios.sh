#!/usr/bin/env bash
# One batch, one corpus, every figure as a ratio (issue 17): `cat`, the validating-parse floor
# on one core (benches/floor.rs), `weir run --oneshot` with the default pipeline (its alerts
# included) and without its [[alerts]], a live `weir run` reading the same bytes on stdin, and
# mtail when it is installed (`apt-get install mtail`; benches/agents.mtail derives the same four
# metrics: on 20,000 generated lines its series equal weir's). Each command runs RUNS times,
# interleaved; the median wall time is kept, with CPU seconds (user + sys) and peak RSS of that
# run. The machine is shared and noisy: quote the ratios, not the seconds.
#
# `weir-oneshot-1thread` is the same run with `--threads 1` (one parse worker beside the derive
# thread): the per-core figure against the floor. With WEIR_BASELINE=/path/to/an/older/weir the
# batch also runs that binary on the same pipeline, for a before/after in one run.
#
#   benches/ratios.sh [LINES] [RUNS]        (defaults 1000000 3; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
runs=${2:-3}
cargo build --release --locked --quiet
cargo bench --locked --quiet --bench floor --no-run 2>/dev/null
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
corpus=$dir/corpus.jsonl
"$weir" generate demo-logs --count "$lines" --seed 42 --malformed-rate 0.01 --output "$corpus"
bytes=$(stat -c %s "$corpus")
cat "$corpus" > /dev/null # warm the page cache
# The default pipeline without its [[alerts]] tables.
python3 - "$dir/noalerts.toml" <<'PY'
import sys
out, skip = [], False
for line in open("pipelines/agents.toml").read().split("\n"):
    if line.startswith("["):
        skip = line.startswith("[[alerts]]")
    if not skip:
        out.append(line)
open(sys.argv[1], "w").write("\n".join(out))
PY
mkdir -p "$dir/mtail" && cp benches/agents.mtail "$dir/mtail/"

# name, then the command (stdin from the corpus when the name ends in "<").
run_one() {
  local name=$1; shift
  if [[ $name == *"<" ]]; then
    /usr/bin/time -f '%e %U %S %M' -o "$dir/t" "$@" < "$corpus" > /dev/null 2> "$dir/err" || { cat "$dir/err" >&2; exit 1; }
  else
    /usr/bin/time -f '%e %U %S %M' -o "$dir/t" "$@" > /dev/null 2> "$dir/err" || { cat "$dir/err" >&2; exit 1; }
  fi
  echo "$name $(tail -1 "$dir/t")" >> "$dir/results"
}
: > "$dir/results"
load=$(cut -d' ' -f1-3 /proc/loadavg)
floor=""
for _ in $(seq "$runs"); do
  run_one "cat" cat "$corpus"
  run_one "weir-oneshot" "$weir" run --oneshot --progress never "$corpus"
  run_one "weir-oneshot-noalerts" "$weir" run --oneshot --progress never --config "$dir/noalerts.toml" "$corpus"
  run_one "weir-oneshot-1thread" "$weir" run --oneshot --progress never --threads 1 "$corpus"
  if [[ -n ${WEIR_BASELINE:-} ]]; then
    run_one "baseline-oneshot" "$WEIR_BASELINE" run --oneshot --progress never "$corpus"
  fi
  run_one "weir-live-stdin<" "$weir" run --listen 127.0.0.1:0 --admin-listen off
  if command -v mtail >/dev/null; then
    run_one "mtail" mtail --one_shot --one_shot_format prometheus --progs "$dir/mtail" --logs "$corpus"
  fi
  f=$(cargo bench --locked --quiet --bench floor -- "$corpus" 2>/dev/null | grep floor_json_s)
  floor="$floor $(sed -n 's/.*floor_json_s=\([0-9.]*\).*/\1/p' <<<"$f")"
  newlines=$(sed -n 's/.*floor_newlines_s=\([0-9.]*\).*/\1/p' <<<"$f")
done
command -v mtail >/dev/null || echo "mtail: not installed (apt-get install mtail): not run"
floor_s=$(tr ' ' '\n' <<<"$floor" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "corpus: $lines lines, $(awk -v b="$bytes" 'BEGIN{printf "%.1f MB", b/1e6}'); $runs runs each, median wall; load average before: $load"
awk -v l="$lines" -v floor="$floor_s" -v nl="$newlines" '
  { n[$1]++; k = $1 "," n[$1]; wall[k] = $2; cpu[k] = $3 + $4; rss[k] = $5; names[$1] = 1 }
  END {
    for (name in names) {
      # median by wall
      m = n[name]; for (i = 1; i <= m; i++) w[i] = wall[name "," i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (w[j] < w[i]) { t = w[i]; w[i] = w[j]; w[j] = t }
      med = w[int((m + 1) / 2)]
      for (i = 1; i <= m; i++) if (wall[name "," i] == med) { c = cpu[name "," i]; r = rss[name "," i] }
      mw[name] = med; mc[name] = c; mr[name] = r
    }
    printf "%-26s %8s %12s %10s %14s %9s\n", "run", "wall s", "lines/s", "CPU s", "lines/CPU-s", "RSS MB"
    split("cat mtail baseline-oneshot weir-oneshot weir-oneshot-noalerts weir-oneshot-1thread weir-live-stdin<", order, " ")
    for (i = 1; i <= 7; i++) { x = order[i]; if (!(x in mw)) continue
      printf "%-26s %8.2f %12.0f %10.2f %14.0f %9.1f\n", x, mw[x], l / mw[x], mc[x], (mc[x] > 0 ? l / mc[x] : 0), mr[x] / 1024 }
    printf "%-26s %8.2f %12.0f   (one core, serde_json IgnoredAny per line)\n", "floor (validating parse)", floor, l / floor
    printf "%-26s %8.3f   (memchr over the newlines)\n", "floor (newlines)", nl
    printf "\nratios (same batch):\n"
    printf "  weir oneshot / floor:                 %5.2f x (wall; weir CPU / floor: %.2f x)\n", mw["weir-oneshot"] / floor, mc["weir-oneshot"] / floor
    printf "  weir oneshot without alerts / floor:  %5.2f x\n", mw["weir-oneshot-noalerts"] / floor
    printf "  weir --threads 1 / floor (per core):  %5.2f x\n", mw["weir-oneshot-1thread"] / floor
    printf "  weir oneshot / --threads 1:           %5.2f x faster (wall)\n", mw["weir-oneshot-1thread"] / mw["weir-oneshot"]
    if ("baseline-oneshot" in mw) printf "  baseline / weir oneshot:              %5.2f x (wall; %.2f x per CPU-second)\n", mw["baseline-oneshot"] / mw["weir-oneshot"], mc["baseline-oneshot"] / mc["weir-oneshot"]
    printf "  alerts cost (oneshot / no alerts):    %+5.1f%% wall, %+5.1f%% CPU\n", 100 * (mw["weir-oneshot"] / mw["weir-oneshot-noalerts"] - 1), 100 * (mc["weir-oneshot"] / mc["weir-oneshot-noalerts"] - 1)
    printf "  live stdin / oneshot:                 %+5.1f%% wall, %+5.1f%% CPU\n", 100 * (mw["weir-live-stdin<"] / mw["weir-oneshot"] - 1), 100 * (mc["weir-live-stdin<"] / mc["weir-oneshot"] - 1)
    printf "  weir oneshot / cat:                   %5.1f x\n", mw["weir-oneshot"] / mw["cat"]
    if ("mtail" in mw) printf "  mtail / weir oneshot:                 %5.1f x (weir is that many times faster, wall; %.1f x per CPU-second)\n", mw["mtail"] / mw["weir-oneshot"], mc["mtail"] / mc["weir-oneshot"]
  }' "$dir/results"
