"""What the cluster tests read of an operator process: the lines of its log that report a
request refused (`refused_requests`, tests/cluster/test_chart.py), and its passes of one
endpoint from its /metrics (`OperatorProcess.passes`)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from e2e.operator_process import OperatorProcess, refused_requests

CLEAN = """\
[2026-12-02 10:42:34,403] kopf._core.engines.a [INFO    ] Initial authentication has been initiated.
[2026-12-02 10:42:35,345] magistral_operator.h [INFO    ] team-a/magistral-small: applied []
"""


def test_a_time_stamp_whose_milliseconds_read_403_is_no_refusal() -> None:
    # Stop 23's CI: the chart test took "…,403]" for a refused request.
    assert refused_requests(CLEAN) == []


def test_a_refused_watch_or_write_is_found_by_its_code_or_reason() -> None:
    kopf = (
        "[2026-12-02 10:42:36,001] kopf._cogs.clients.w [ERROR   ] Request attempt #1 failed; "
        "APIForbiddenError: ('deployments.apps is forbidden', {'code': 403})"
    )
    client = "[2026-12-02 10:42:36,002] magistral_operator.h [WARNING ] HTTP 403 on a patch"
    found = refused_requests(CLEAN + kopf + "\n" + client + "\n")
    assert found == [kopf, client]


def test_passes_are_read_from_the_operators_metrics_of_one_endpoint(tmp_path: Path) -> None:
    """`OperatorProcess.passes`, what the cluster tests count while they wait for nothing to
    change (tests/cluster/conftest.py `passes_completed`)."""
    text = (
        b"# TYPE magistral_operator_endpoint_passes_total counter\n"
        b'magistral_operator_endpoint_passes_total{endpoint="a",namespace="n1"} 7.0\n'
        b'magistral_operator_endpoint_passes_total{endpoint="b",namespace="n1"} 3.0\n'
        b'magistral_operator_endpoint_passes_total{endpoint="a",namespace="n2"} 5.0\n'
    )

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = OperatorProcess(kubeconfig=tmp_path / "k", log_file=tmp_path / "log", metrics=True)
        assert proc.passes("n1", "a") is None  # not started: no port yet
        proc.metrics_port = server.server_address[1]
        assert proc.passes("n1", "a") == 7.0
        assert proc.passes("n2", "a") == 5.0
        assert proc.passes("n1", "c") == 0.0  # no pass of it yet
    finally:
        server.shutdown()
        server.server_close()
    assert proc.passes("n1", "a") is None  # no answer
