"""`e2e.operator_process.refused_requests`: the lines of an operator's log that report a
request refused, as the chart test reads them (tests/cluster/test_chart.py)."""

from __future__ import annotations

from e2e.operator_process import refused_requests

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
