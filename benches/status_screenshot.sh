#!/usr/bin/env bash
# A screenshot of the status page `/` (issue 16) for the README: weir runs the default pipeline
# on generated demo logs (10,000 lines with incidents and 2% malformed lines, so an alert fires
# and parse problems show, then a live stream of 300 lines/s, so rates show), and headless
# chromium writes the page as docs/status.png (after a few polls, so rates show).
# Usage: benches/status_screenshot.sh [OUTPUT.png]   (needs chromium: .ci/install-test-tools.sh)
# WEIR=path/to/weir uses that binary instead of building target/debug/weir.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/status.png}
command -v chromium >/dev/null || { echo "chromium is needed (apt-get install -y chromium)" >&2; exit 1; }
if [ -z "${WEIR:-}" ]; then
  cargo build --quiet --bin weir
  WEIR=$PWD/target/debug/weir
fi
dir=$(mktemp -d)
weir_pid=""
cleanup() {
  if [ -n "$weir_pid" ]; then kill "$weir_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkfifo "$dir/in"
WEIR_ADMIN_LISTEN=off "$WEIR" run --listen "127.0.0.1:$port" < "$dir/in" 2>"$dir/err" &
weir_pid=$!
{
  "$WEIR" generate demo-logs --incidents --seed 16 --malformed-rate 0.02 -n 10000
  "$WEIR" generate demo-logs --live --rate 300 --count 0 --seed 2
} > "$dir/in" 2>/dev/null &
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
sleep 4
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$dir/profile" --hide-scrollbars --window-size=1280,900 \
  --virtual-time-budget=5000 --screenshot="$PWD/$out" "http://127.0.0.1:$port/" 2>"$dir/chromium.err" \
  || { cat "$dir/chromium.err" >&2; exit 1; }
echo "wrote $out"
