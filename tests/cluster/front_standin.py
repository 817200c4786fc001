"""A stand-in for ``magistral-runtime front`` while that command is not installed.

Listens on ``--host``/``--port`` (every path: 200) and ``--demand-port`` (``/healthz``: 200),
ignores the other flags, exits on SIGTERM. Only ``test_router_pods.py`` uses it, through a
``magistral-runtime`` wrapper in a temporary bin dir, and only when the real command has no
``front``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"standin": "magistral-runtime front"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--demand-port", type=int, required=True)
    known, _ = parser.parse_known_args(argv)
    servers = [
        ThreadingHTTPServer((known.host, port), _Handler)
        for port in (known.port, known.demand_port)
    ]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"front stand-in on {known.host}:{known.port} and :{known.demand_port}", flush=True)
    done.wait()
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
