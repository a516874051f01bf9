#!/usr/bin/env bash
# Soak (issue 13 §3): mixed traffic into a release weir for SOAK_SECS (default 3600) with
# logrotate-style rotations, Loki outages and SIGHUP reloads; RSS and open fds sampled every
# 10 s into a CSV; at the end a verdict line: "flat" when the max of the last window is within
# 20% of the max of the first window after warm-up, for RSS and for fds. Not a CI test.
#
#   SOAK_SECS=600 benches/soak.sh            (10 minutes; the CSV path is printed)
#
# Knobs (environment): SOAK_SECS (3600), RATE lines/s (2000), ROTATE_SECS (30, rename app.log
# to app.log.1 and start a new one, keep 2), OUTAGE_EVERY (120) and OUTAGE_SECS (30, the Loki
# receiver is killed, then started again on the same port), RELOAD_SECS (180, SIGHUP after
# editing the pipeline), WARMUP_SECS (60), SAMPLE_SECS (10), WEIR (target/release/weir;
# built with `cargo build --release` when missing), SOAK_DIR (a temp dir; kept at the end).
# Traffic: the default pipeline's two JSON shapes (tasks, errors, queue alerts), 1% lines that
# are not JSON, 0.5% with an unescaped message (repaired), 0.1% of 20 KB.
# The receiver is benches/receiver.py (loki).
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECS=${SOAK_SECS:-3600}
RATE=${RATE:-2000}
ROTATE_SECS=${ROTATE_SECS:-30}
OUTAGE_EVERY=${OUTAGE_EVERY:-120}
OUTAGE_SECS=${OUTAGE_SECS:-30}
RELOAD_SECS=${RELOAD_SECS:-180}
WARMUP_SECS=${WARMUP_SECS:-60}
SAMPLE_SECS=${SAMPLE_SECS:-10}
WEIR=${WEIR:-$PWD/target/release/weir}
[ -x "$WEIR" ] || cargo build --release --quiet
dir=${SOAK_DIR:-$(mktemp -d /tmp/weir-soak.XXXXXX)}
mkdir -p "$dir/logs" "$dir/data"
csv="$dir/soak.csv"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
lport=$(port) mport=$(port) aport=$(port)

# The generator: RATE lines/s into logs/app.log, rotated every ROTATE_SECS as logrotate does
# (rename, then the writer opens a new file), at most 2 old files kept.
cat >"$dir/gen.py" <<'EOF'
import json, os, random, sys, time
path, rate, rotate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rnd = random.Random(13)
agents = [f"agent-{i:02d}" for i in range(20)]
f = open(path, "a", buffering=1 << 16)
start = last_rot = time.time()
n = 0
def line():
    r = rnd.random()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
    a = rnd.choice(agents)
    if r < 0.01:
        return "Traceback (most recent call last): not json at all"
    if r < 0.015:
        return '{"timestamp":"%s","level":"INFO","component":"MonitoringCollector","message":"Task completed: "quoted" success","metadata":{"agent_id":"%s","status":"success","duration":1.5}}' % (ts, a)
    if r < 0.016:
        return json.dumps({"timestamp": ts, "level": "INFO", "message": "x" * 20000})
    if r < 0.1:
        return json.dumps({"timestamp": ts, "level": "ERROR", "component": "AgentOrchestrator", "message": "Task failed", "metadata": {"agent_id": a, "error_type": rnd.choice(["Timeout", "OOM", "Crash"]), "trace_id": "%032x" % rnd.getrandbits(128)}})
    if r < 0.12:
        return json.dumps({"timestamp": ts, "level": "WARNING", "component": "QueueMonitor", "message": "ALERT: queue depth high", "metadata": {"queue_name": "q%d" % rnd.randrange(5), "current_depth": rnd.randrange(1000)}})
    return json.dumps({"timestamp": ts, "level": "INFO", "component": "AgentOrchestrator", "message": "Task completed", "trace_id": "%032x" % rnd.getrandbits(128), "metadata": {"agent_id": a, "status": rnd.choice(["success", "success", "failure"]), "duration": round(rnd.expovariate(1.0), 3)}})
while time.time() - start < secs:
    t0 = time.time()
    for _ in range(max(1, rate // 10)):
        f.write(line() + "\n"); n += 1
    f.flush()
    if time.time() - last_rot >= rotate:
        f.close()
        for i in (2, 1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}") if i < 2 else os.remove(f"{path}.{i}")
        os.replace(path, f"{path}.1")
        f = open(path, "a", buffering=1 << 16)
        last_rot = time.time()
    with open(path + ".count.tmp", "w") as c:
        c.write(str(n))
    os.replace(path + ".count.tmp", path + ".count")
    time.sleep(max(0.0, 0.1 - (time.time() - t0)))
f.close()
EOF

# The pipeline: the default one, a file source and a Loki sink; a reload toggles a comment
# line and a metric's help text (a changed metric is swapped, the others keep their series).
write_pipeline() {
  {
    echo "# reload $1"
    echo "data_dir = '$dir/data'"
    echo "[[sources]]"
    echo "type = \"file\""
    echo "paths = ['$dir/logs/app.log']"
    echo "rotate_wait_ms = 2000"
    echo "[[sinks]]"
    echo "type = \"loki\""
    echo "endpoint = \"http://127.0.0.1:$lport\""
    echo "[sinks.batch]"
    echo "max_age_ms = 500"
    sed -n '/^\[event\]/,$p' pipelines/agents.toml |
      sed "0,/^help = .*/s//help = \"Duration of agent tasks (reload $1).\"/"
  } >"$dir/pipeline.toml.new"
  mv "$dir/pipeline.toml.new" "$dir/pipeline.toml"
}
write_pipeline 0
"$WEIR" validate --config "$dir/pipeline.toml" >/dev/null

start_receiver() { python3 benches/receiver.py loki "$lport" 2>>"$dir/receiver.log" & rpid=$!; }
start_receiver
touch "$dir/logs/app.log"
"$WEIR" run --config "$dir/pipeline.toml" --listen "127.0.0.1:$mport" \
  --admin-listen "127.0.0.1:$aport" >/dev/null 2>"$dir/weir.log" &
wpid=$!
pids+=("$wpid")
sleep 1
python3 "$dir/gen.py" "$dir/logs/app.log" "$RATE" "$ROTATE_SECS" "$SOAK_SECS" &
gpid=$!
pids+=("$gpid")

events() {
  curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" |
    awk '/^weir_events_total/ {s += $NF} END {printf "%d", s}' || true
}
echo "t_secs,rss_kb,fds,lines_written,events_total,receiver_up,reloads" >"$csv"
t0=$(date +%s)
reloads=0 up=1 next_outage=$OUTAGE_EVERY next_reload=$RELOAD_SECS next_sample=0
while :; do
  t=$(($(date +%s) - t0))
  [ "$t" -ge "$SOAK_SECS" ] && break
  kill -0 "$wpid" 2>/dev/null || { echo "weir exited during the soak (see $dir/weir.log)"; exit 1; }
  if [ "$up" = 1 ] && [ "$t" -ge "$next_outage" ]; then
    kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true
    up=0 back=$((t + OUTAGE_SECS))
  elif [ "$up" = 0 ] && [ "$t" -ge "$back" ]; then
    start_receiver; up=1 next_outage=$((t + OUTAGE_EVERY))
  fi
  if [ "$t" -ge "$next_reload" ]; then
    reloads=$((reloads + 1)); write_pipeline "$reloads"; kill -HUP "$wpid"
    next_reload=$((t + RELOAD_SECS))
  fi
  if [ "$t" -ge "$next_sample" ]; then
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$wpid/status")
    fds=$(ls "/proc/$wpid/fd" | wc -l)
    echo "$t,$rss,$fds,$(cat "$dir/logs/app.log.count" 2>/dev/null || echo 0),$(events),$up,$reloads" >>"$csv"
    next_sample=$((t + SAMPLE_SECS))
  fi
  sleep 1
done
[ "$up" = 1 ] || start_receiver
pids+=("$rpid")
wait "$gpid" 2>/dev/null || true
written=$(cat "$dir/logs/app.log.count")
# Let weir catch up (at most 60 s), then stop it: it must exit within its shutdown deadline.
for _ in $(seq 60); do [ "$(events)" -ge "$written" ] && break; sleep 1; done
read_all=$(events)
kill -TERM "$wpid"; rc=0; wait "$wpid" || rc=$?

status=0
(python3 - "$csv" "$WARMUP_SECS" "$written" "$read_all" "$rc" "$reloads" <<'EOF'
import csv, sys
path, warm, written, read_all, rc, reloads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(path))]
end = rows[-1]["t_secs"]
window = min(600, max(10, (end - warm) // 2))
first = [r for r in rows if warm <= r["t_secs"] < warm + window]
last = [r for r in rows if r["t_secs"] > end - window]
verdicts = []
for key, slack in (("rss_kb", 0), ("fds", 2)):
    a, b = max(r[key] for r in first), max(r[key] for r in last)
    ok = b <= a * 1.2 + slack
    verdicts.append(ok)
    print(f"{key}: first window [{warm}s, {warm + window}s) max {a}, last window ({end - window}s, {end}s] max {b}, "
          f"overall min {min(r[key] for r in rows)} max {max(r[key] for r in rows)}: {'flat' if ok else 'GROWING'}")
print(f"lines written {written}, read by weir {read_all}, reloads {reloads}, samples {len(rows)}, weir exit status {rc}")
ok = all(verdicts) and read_all >= written and rc == 0
print(f"verdict: {'PASS' if ok else 'FAIL'} (RSS and fds flat: last window max within 20% of the first's, fds +2; every line read; clean exit)")
sys.exit(0 if ok else 1)
EOF
) || status=$?
echo "csv: $csv  logs: $dir/weir.log"
exit $status
