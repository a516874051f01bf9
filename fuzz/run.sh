#!/usr/bin/env bash
# Runs one fuzz target for SECONDS with libFuzzer and prints its exec count.
#
#   fuzz/run.sh TARGET SECONDS        e.g. fuzz/run.sh condition 300
#   fuzz/run.sh list                  the targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The sanitizer flags of cargo-fuzz are nightly
# flags; on a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them (set here, for this
# build only). Limits: 2 GiB RSS, 10 s per input (a slower input is a hang and is saved as a
# crash), so "no crash, no hang, no unbounded allocation" is what a clean run shows.
# Corpus: fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET), findings: fuzz/artifacts/TARGET,
# log: fuzz/logs/TARGET.log. Exit status: libFuzzer's (0: nothing found).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if [[ "${1:-}" == "list" ]]; then
    RUSTC_BOOTSTRAP=1 cargo fuzz list
    exit 0
fi
if [[ $# -ne 2 ]]; then
    echo "usage: fuzz/run.sh TARGET SECONDS   (fuzz/run.sh list: the targets)" >&2
    exit 2
fi
target="$1" secs="$2"
export RUSTC_BOOTSTRAP=1
mkdir -p "corpus/$target" "artifacts/$target" logs
if [[ -d "seeds/$target" ]]; then
    cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
fi
dict=()
if [[ -f "seeds/$target.dict" ]]; then
    dict=("-dict=seeds/$target.dict")
fi
log="logs/$target.log"
set +e
cargo fuzz run --release --debug-assertions --sanitizer address "$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=65536 -print_final_stats=1 "${dict[@]}" \
    -artifact_prefix="artifacts/$target/" >"$log" 2>&1
rc=$?
set -e
execs="$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)"
rate="$(grep -oP 'stat::average_exec_per_sec:\s*\K[0-9]+' "$log" | tail -1 || true)"
echo "target=$target seconds=$secs execs=${execs:-?} exec_per_sec=${rate:-?} rc=$rc log=fuzz/$log"
if [[ $rc -ne 0 ]]; then
    grep -E 'ERROR|panicked|SUMMARY|artifact|Test unit written' "$log" | head -20 >&2 || true
fi
exit "$rc"
