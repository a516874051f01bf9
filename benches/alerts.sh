#!/usr/bin/env bash
# Alerting cost (issue 5): `weir run --oneshot` over generated lines with incidents
# (`--incidents`: the default pipeline's four alerts fire and resolve every 40 minutes of log
# time), in the same command:
#   1. the default pipeline's metrics without its [[alerts]] (the baseline),
#   2. with its four alerts (windows, evaluation every second of log time),
#   3. with the alerts sent (--notify) to a webhook that answers at once,
#   4. with the alerts sent to a webhook that never answers (--shutdown-timeout-secs 0: weir
#      gives the queued notifications no time at the end).
# The hung notifier must not slow processing: run 4 should take as long as run 3.
# Usage: benches/alerts.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
cargo build --release --quiet
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
$weir generate demo-logs --incidents --count "$lines" --seed 4 --output "$dir/c.jsonl"
sed '/^# Alerts:/,$d' pipelines/agents.toml > "$dir/metrics-only.toml"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
run() { local t0; t0=$(now); "$weir" run --oneshot --progress never "$@" "$dir/c.jsonl" > "$dir/out" 2>"$dir/err" || { cat "$dir/err"; exit 1; }; echo "$(now) - $t0" | bc; }
report() { printf "%-40s %6.2f s %9.0f lines/s  ratio %.2fx baseline  %s\n" "$1" "$2" "$(echo "$lines / $2" | bc -l)" "$(echo "$2 / $base" | bc -l)" "$3"; }
fired() { grep -c '"message":"alert firing"' "$dir/err" || true; }
sent() { grep -o 'weir_alert_notifications_total{notifier="hook",result="[a-z]*"} [0-9]*' "$dir/out" | sed 's/.*result=//' | tr '\n' ' '; }

base=$(run --config "$dir/metrics-only.toml")
report "metrics only (baseline)" "$base" ""
t=$(run); report "with the 4 default alerts" "$t" "alerts fired: $(fired)"
for kind in hook hang; do
  p=$(port); python3 benches/receiver.py $kind $p 2>/dev/null & r=$!; sleep 0.5
  printf '[notifiers.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:%s/"\n' "$p" | cat pipelines/agents.toml - > "$dir/notify.toml"
  t=$(run --config "$dir/notify.toml" --notify --shutdown-timeout-secs 0)
  kill $r; wait $r 2>/dev/null || true
  report "alerts + webhook ($kind)" "$t" "notifications: $(sent)"
done
