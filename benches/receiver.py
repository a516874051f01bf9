#!/usr/bin/env python3
"""Minimal local receivers for benches/sinks.sh and benches/alerts.sh: accept and discard, as fast as Python allows.

  receiver.py loki PORT            answers 204 to POST /loki/api/v1/push
  receiver.py elasticsearch PORT   answers a _bulk response with one 201 item per action
  receiver.py down PORT SECONDS    accepts nothing for SECONDS, then behaves like loki
  receiver.py hook PORT            answers 200 to any POST (a webhook notifier's endpoint)
  receiver.py otlp PORT            answers 200 (an empty OTLP export response) to any POST
  receiver.py hang PORT            reads each request and never answers

Each prints the number of requests and body bytes received to stderr when stopped."""
import http.server
import json
import re
import signal
import socketserver
import sys
import time

kind, port = sys.argv[1], int(sys.argv[2])
ID = re.compile(rb'^\{"create":\{"_index":"[^"]*","_id":"([^"]+)"', re.M)
stats = {"requests": 0, "bytes": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        stats["requests"] += 1
        stats["bytes"] += n
        if kind == "hang":
            time.sleep(86400)
        if kind == "elasticsearch":
            # Items echo the ids of the action lines, in order (found with a regex, in C, so
            # the receiver is not what limits the benchmark).
            ids = ID.findall(body)
            item = b'{"create":{"_index":"i","_id":"%s","_version":1,"result":"created","status":201}}'
            out = b'{"took":1,"errors":false,"items":[' + b",".join(item % i for i in ids) + b"]}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        elif kind == "hook":
            out = b""
            self.send_response(200)
        elif kind == "otlp":
            # An empty Export*ServiceResponse: full success, no partial_success.
            out = b""
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
        else:
            out = b""
            self.send_response(204)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# Background jobs of a script ignore SIGINT; stop on SIGTERM too.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

if kind == "down":
    time.sleep(float(sys.argv[3]))
    kind = "loki"
try:
    Server(("127.0.0.1", port), Handler).serve_forever()
except (KeyboardInterrupt, SystemExit):
    pass
finally:
    print(json.dumps(stats), file=sys.stderr)
