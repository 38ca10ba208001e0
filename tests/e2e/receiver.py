"""A webhook receiver for end-to-end tests: ``python receiver.py PORT OUT_FILE [DELAY_S]``.

Answers every POST with 200 after DELAY_S (so deliveries are in flight when a worker dies) and
appends one JSON line per request to OUT_FILE: the Standard Webhooks headers and the raw body.
Runs as its own process so a test can start it late (a receiver that is down, then up).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "x-stigmem-event-id")


def main() -> None:
    port, out_path = int(sys.argv[1]), sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    lock = threading.Lock()
    out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the process

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the delivery engine pools connections

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay)
            record = {"headers": {h: self.headers.get(h) for h in HEADERS}, "body": body.decode("utf-8")}
            with lock:
                out.write(json.dumps(record) + "\n")
                out.flush()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args) -> None:
            pass  # one line per request in OUT_FILE is the log

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
