#!/usr/bin/env python3
"""Checks a weir exposition against the agent metrics computed independently from the corpus.

    python3 benches/check_exposition.py corpus.jsonl exposition.txt

The corpus is `weir generate demo-logs` output (any --malformed-rate); the exposition is what
`weir run --oneshot corpus.jsonl` printed with the default pipeline (pipelines/agents.toml).
Computes, without weir, what that pipeline must show -- agent_task_success_total,
agent_task_failure_total, agent_task_duration_seconds (buckets, sum, count) and
agent_queue_depth (last value) -- the same rules as tests/integration/util.rs
`expected_agent_metrics`, and compares every agent_* series both ways. Prints
`series expected N found M mismatched K` and exits 1 if anything differs. Python 3 only, no
packages.
"""
import json
import re
import sys

BUCKETS = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def key(name, **labels):
    return (name, tuple(sorted(labels.items())))


def format_le(b):
    # Rust formats f64 as the shortest text that round-trips: 0.1, 0.5, 1, 2.5, 5, 10, 30, 60.
    return str(int(b)) if float(b).is_integer() else repr(b)


def expected(corpus_path):
    exp, hist = {}, {}
    with open(corpus_path, "rb") as f:
        for raw in f:
            try:
                v = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(v, dict) or not isinstance(v.get("metadata"), dict):
                continue
            md = v["metadata"]
            if v.get("message") == "Task completed":
                agent, status = str(md.get("agent_id", "")), str(md.get("status", ""))
                if status == "success":
                    k = key("agent_task_success_total", agent_id=agent)
                    exp[k] = exp.get(k, 0.0) + 1
                elif status == "failure":
                    et = md.get("error_type") if isinstance(md.get("error_type"), str) else "unknown"
                    k = key("agent_task_failure_total", agent_id=agent, error_type=et)
                    exp[k] = exp.get(k, 0.0) + 1
                d = float(md["duration"])
                counts, total, n = hist.get((agent, status), ([0] * 9, 0.0, 0))
                i = next((j for j, b in enumerate(BUCKETS) if d <= b), 8)
                counts[i] += 1
                hist[(agent, status)] = (counts, total + d, n + 1)
            elif isinstance(md.get("queue_name"), str) and isinstance(md.get("depth"), (int, float)) \
                    and not isinstance(md.get("depth"), bool):
                exp[key("agent_queue_depth", queue_name=md["queue_name"])] = float(md["depth"])
    for (agent, status), (counts, total, n) in hist.items():
        cum = 0
        for i, c in enumerate(counts):
            cum += c
            le = format_le(BUCKETS[i]) if i < 8 else "+Inf"
            exp[key("agent_task_duration_seconds_bucket", agent_id=agent, status=status, le=le)] = float(cum)
        exp[key("agent_task_duration_seconds_sum", agent_id=agent, status=status)] = total
        exp[key("agent_task_duration_seconds_count", agent_id=agent, status=status)] = float(n)
    return exp


def found(exposition_path):
    got = {}
    with open(exposition_path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("agent_"):
                continue
            m = SERIES.match(line)
            if not m:
                continue
            labels = dict(LABEL.findall(m.group(2) or ""))
            got[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(3))
    return got


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    exp, got = expected(sys.argv[1]), found(sys.argv[2])
    bad = []
    for k, e in exp.items():
        g = got.get(k)
        if g is None:
            bad.append(f"missing {k} (expected {e})")
        elif k[0].endswith("_sum"):
            if abs(g - e) > 1e-9 * max(abs(e), 1.0):
                bad.append(f"{k}: expected {e} got {g}")
        elif g != e:
            bad.append(f"{k}: expected {e} got {g}")
    bad += [f"unexpected {k}" for k in got if k not in exp]
    print(f"series expected {len(exp)} found {len(got)} mismatched {len(bad)}")
    for b in bad[:20]:
        print("  " + b, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
