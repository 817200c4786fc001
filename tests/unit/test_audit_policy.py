"""The local cluster's audit policy (e2e/cluster/components.py): writes by default, and the
reads of named users only when asked (bench/scale.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from e2e.cluster.components import AUDIT_POLICY, Layout, audit_policy, write_audit_policy

OPERATOR = "system:serviceaccount:magistral-system:magistral-operator"
WRITES = ["create", "update", "patch", "delete", "deletecollection"]


def test_default_policy_logs_writes_only() -> None:
    assert audit_policy() == AUDIT_POLICY
    rules = yaml.safe_load(AUDIT_POLICY)["rules"]
    assert rules == [{"level": "Metadata", "verbs": WRITES}, {"level": "None"}]


def test_reads_of_named_users_come_after_writes_and_before_the_catch_all() -> None:
    policy = yaml.safe_load(audit_policy([OPERATOR, "other"]))
    assert policy["omitStages"] == ["RequestReceived"]
    assert policy["rules"] == [
        {"level": "Metadata", "verbs": WRITES},
        {"level": "Metadata", "users": [OPERATOR, "other"], "verbs": ["get", "list", "watch"]},
        {"level": "None"},
    ]


def test_written_file(tmp_path: Path) -> None:
    layout = Layout(state_dir=tmp_path, ports={})
    assert write_audit_policy(layout).read_text() == AUDIT_POLICY
    path = write_audit_policy(layout, read_users=[OPERATOR])
    assert OPERATOR in path.read_text()
