#!/usr/bin/env bash
# Input throughput (issue 3), each figure beside a baseline run in the same command:
#   1. one large file tailed live (1,000,000 lines) vs `cat FILE | wc -l`
#   2. 100 files written at once (100 x 10,000 lines), tailed by one glob, vs `cat *.log | wc -l`
#   3. TCP from 8 concurrent clients (8 x 125,000 lines) vs a plain socket server that only
#      reads the same bytes (Python, 1 MiB reads, one thread per client)
# weir runs the default pipeline (parse + derive), so its figure includes all processing; the
# time is from start until weir_events_total reaches the line count.
# Usage: benches/inputs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

now() { date +%s.%N; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_events PORT N: polls /metrics until weir_events_total sums to N
wait_events() {
  python3 - "$1" "$2" <<'PY'
import sys, time, urllib.request
port, want = sys.argv[1], float(sys.argv[2])
while True:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        got = sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith("weir_events_total"))
        if got >= want:
            break
    except OSError:
        pass
    time.sleep(0.02)
PY
}
report() { awk -v n="$2" -v w="$3" -v b="$4" -v name="$1" 'BEGIN {
  printf "%-34s weir %6.2f s %9.0f lines/s | baseline %6.2f s | ratio %5.1f x\n", name, w, n / w, b, w / b }'; }

# 1. One large file.
$weir generate demo-logs --count 1000000 --seed 1 --output "$dir/big.log"
cat "$dir/big.log" > /dev/null
t0=$(now); cat "$dir/big.log" | wc -l > /dev/null; base=$(echo "$(now) - $t0" | bc)
p=$(port); t0=$(now)
$weir run --listen 127.0.0.1:$p --data-dir "$dir/d1" "$dir/big.log" 2>/dev/null &
pid=$!; wait_events $p 1000000; w=$(echo "$(now) - $t0" | bc); kill $pid; wait $pid 2>/dev/null || true
report "tail one file (1M lines)" 1000000 "$w" "$base"

# 2. 100 files written at once.
mkdir "$dir/many"
for i in $(seq 1 100); do $weir generate demo-logs --count 10000 --seed "$i" --output "$dir/many/app-$i.log"; done
cat "$dir"/many/*.log > /dev/null
t0=$(now); cat "$dir"/many/*.log | wc -l > /dev/null; base=$(echo "$(now) - $t0" | bc)
p=$(port); t0=$(now)
$weir run --listen 127.0.0.1:$p --data-dir "$dir/d2" "$dir/many/*.log" 2>/dev/null &
pid=$!; wait_events $p 1000000; w=$(echo "$(now) - $t0" | bc); kill $pid; wait $pid 2>/dev/null || true
report "tail 100 files (100 x 10k lines)" 1000000 "$w" "$base"

# 3. TCP, 8 clients.
$weir generate demo-logs --count 125000 --seed 3 --output "$dir/client.log"
send_all() { # send_all PORT: 8 concurrent clients each send client.log
  python3 - "$1" "$dir/client.log" <<'PY'
import socket, sys, threading
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, "rb").read()
def client():
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(data); s.close()
ts = [threading.Thread(target=client) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
}
p=$(port)
python3 - "$p" <<'PY' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
def drain(c):
    while c.recv(1 << 20): pass
ts = []
for _ in range(8):
    c, _ = srv.accept(); t = threading.Thread(target=drain, args=(c,)); t.start(); ts.append(t)
[t.join() for t in ts]
PY
srv=$!; sleep 0.3; t0=$(now); send_all $p; wait $srv; base=$(echo "$(now) - $t0" | bc)
p=$(port); t=$(port)
$weir run --listen 127.0.0.1:$p --tcp 127.0.0.1:$t 2>/dev/null &
pid=$!; sleep 0.5; t0=$(now); send_all $t; wait_events $p 1000000; w=$(echo "$(now) - $t0" | bc)
kill $pid; wait $pid 2>/dev/null || true
report "tcp, 8 clients (8 x 125k lines)" 1000000 "$w" "$base"
