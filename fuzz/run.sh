#!/usr/bin/env bash
# Runs one fuzz target for SECONDS with libFuzzer and prints its exec count.
#
#   fuzz/run.sh TARGET SECONDS        e.g. fuzz/run.sh condition 300
#   fuzz/run.sh list                  the targets
#   FUZZ_NO_BUILD=1 fuzz/run.sh ...   run what was built last (no rebuild of weir)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Its sanitizer flags (`-Zsanitizer=address`)
# are nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them (set here,
# for this build only). Built with --release and debug assertions (overflow checks on).
# Limits: 2 GiB RSS and 2 GiB per allocation, 10 s per input (a slower input is a hang and is
# saved like a crash), so "no crash, no hang, no unbounded allocation" is what a clean run
# shows. Corpus: fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); findings:
# fuzz/artifacts/TARGET/; log: fuzz/logs/TARGET.log. Exit status: libFuzzer's (0: nothing found).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export RUSTC_BOOTSTRAP=1
flags=(--release --debug-assertions --sanitizer address)
if [[ "${1:-}" == "list" ]]; then
    cargo fuzz list
    exit 0
fi
if [[ $# -ne 2 ]]; then
    echo "usage: fuzz/run.sh TARGET SECONDS   (fuzz/run.sh list: the targets)" >&2
    exit 2
fi
target="$1" secs="$2"
mkdir -p "corpus/$target" "artifacts/$target" logs
if [[ -d "seeds/$target" ]]; then
    cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
fi
if [[ -z "${FUZZ_NO_BUILD:-}" ]]; then
    cargo fuzz build "${flags[@]}" "$target" >"logs/$target.build.log" 2>&1 || {
        tail -20 "logs/$target.build.log" >&2
        exit 1
    }
fi
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release/$target"
log="logs/$target.log"
set +e
"$bin" "corpus/$target" \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1
rc=$?
set -e
execs="$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)"
rate="$(grep -oP 'stat::average_exec_per_sec:\s*\K[0-9]+' "$log" | tail -1 || true)"
cov="$(grep -oP '#[0-9]+\s+(DONE|pulse|NEW|REDUCE)\s+cov: \K[0-9]+' "$log" | tail -1 || true)"
echo "target=$target seconds=$secs execs=${execs:-?} exec_per_sec=${rate:-?} cov=${cov:-?} rc=$rc log=fuzz/$log"
if [[ $rc -ne 0 ]]; then
    grep -E 'ERROR|panicked|SUMMARY|Test unit written|overflow' "$log" | head -20 >&2 || true
fi
exit "$rc"
