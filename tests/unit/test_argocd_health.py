"""The Argo CD health check (examples/argocd/health-magistralendpoint.lua) on a real Lua.

Argo CD runs custom health checks on gopher-lua (Lua 5.1) with only the base, table, package
and a reduced os library: no string or math library, and strings have no methods. The test
builds the same sandbox on PUC Lua 5.1 (embedded by `lupa`), passes each fixture object the
way Argo CD does (JSON types: maps as tables, lists as sequences, numbers as Lua numbers) and
checks the returned health against argocd_health/health_test.yaml, whose format is Argo CD's
own (resource_customizations/<group>/<kind>/health_test.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from .conftest import ROOT

SCRIPT = ROOT / "examples" / "argocd" / "health-magistralendpoint.lua"
ARGOCD_CM = ROOT / "examples" / "gitops" / "argocd" / "argocd-cm-health.yaml"
FIXTURES = Path(__file__).parent / "argocd_health"
HEALTH_KEY = "resource.customizations.health.magistral.dev_MagistralEndpoint"
# gitops-engine's HealthStatusCode values Argo CD accepts from a script.
VALID_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

SANDBOX = """
local safe_os = {time = os.time, date = os.date, clock = os.clock}
debug.setmetatable("", nil)        -- gopher-lua without the string library: no ("x"):upper()
string, math, io, debug, coroutine = nil, nil, nil, nil, nil
dofile, loadfile = nil, nil
os = safe_os
local keep = {_G = true, package = true, table = true}
for name in pairs(package.loaded) do
  if not keep[name] then package.loaded[name] = nil end
end
package.loaded.os = safe_os
package.path, package.cpath = "", ""
"""


def sandbox() -> Any:
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    runtime.execute(SANDBOX)
    return runtime


def to_lua(runtime: Any, value: Any) -> Any:
    """A JSON value as Argo CD's decodeValue hands it to the script."""
    if isinstance(value, dict):
        return runtime.table_from({str(k): to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)  # gopher-lua numbers are float64
    return str(value)  # timestamps and the like arrive as JSON strings


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    runtime = sandbox()
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(script if script is not None else SCRIPT.read_text())
    assert lua51.lua_type(result) == "table", f"the script returned {result!r}, not a table"
    return {str(k): str(v) for k, v in result.items()}


def load_fixture(path: str) -> dict[str, Any]:
    # YAML timestamps come back as datetime; Argo CD sees the JSON strings.
    text = (FIXTURES / path).read_text()
    obj: dict[str, Any] = yaml.load(text, Loader=_StringTimestamps)
    return obj


class _StringTimestamps(yaml.SafeLoader):
    pass


_StringTimestamps.add_constructor(
    "tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node)
)

CASES: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_of_fixture(case: dict[str, Any]) -> None:
    obj = load_fixture(case["inputPath"])
    assert obj["kind"] == "MagistralEndpoint"
    result = health(obj)
    assert result["status"] in VALID_STATUSES
    assert result == case["healthStatus"]


def test_every_fixture_is_used_and_every_outcome_covered() -> None:
    used = {c["inputPath"] for c in CASES}
    assert used == {p.name for p in FIXTURES.glob("*.yaml")} - {"health_test.yaml"}
    statuses = {c["healthStatus"]["status"] for c in CASES}
    assert statuses == {"Healthy", "Progressing", "Degraded", "Suspended"}
    reasons = set()
    for case in CASES:
        for cond in (load_fixture(case["inputPath"]).get("status") or {}).get("conditions", []):
            if cond["type"] == "Degraded" and cond["status"] == "True":
                reasons.add(cond["reason"])
    assert {"UnknownPool", "InsufficientGPUMemory", "UnknownModel", "Unschedulable"} <= reasons
    assert "ReplicasFailing" in reasons


def test_degraded_wins_over_ready_and_progressing() -> None:
    obj = load_fixture("ready.yaml")
    for cond in obj["status"]["conditions"]:
        if cond["type"] == "Degraded":
            cond.update(status="True", reason="ReplicasFailing", message="pod x: CrashLoopBackOff")
        if cond["type"] == "Progressing":
            cond.update(status="True", reason="RollingOut", message="")
    assert health(obj) == {
        "status": "Degraded",
        "message": "ReplicasFailing: pod x: CrashLoopBackOff",
    }


def test_generation_compares_as_numbers_not_strings() -> None:
    obj = load_fixture("ready.yaml")
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] = 10
    assert health(obj)["status"] == "Healthy"
    obj["metadata"]["generation"] = 11
    assert health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 11",
    }


def test_empty_conditions_and_unknown_statuses_are_progressing() -> None:
    obj = load_fixture("ready.yaml")
    obj["status"]["conditions"] = []
    assert health(obj)["status"] == "Progressing"
    obj = load_fixture("ready.yaml")
    for cond in obj["status"]["conditions"]:
        cond["status"] = "Unknown"
    assert health(obj)["status"] == "Progressing"


def test_the_sandbox_is_argo_cds() -> None:
    """The sandbox must reject what Argo CD rejects, or the tests above prove little."""
    for forbidden in (
        'return string.format("%d", 1)',
        'return ("x"):upper()',
        "return math.floor(1.5)",
        'return io.open("/etc/passwd")',
        'return require("string")',
    ):
        with pytest.raises(lua51.LuaError):
            sandbox().execute(forbidden)
    runtime = sandbox()
    assert runtime.execute('local t = {}; table.insert(t, "a"); return "x" .. #t .. tostring(2)')
    assert runtime.execute("return os.time()") > 0
    assert runtime.eval("_VERSION") == "Lua 5.1"


def test_argocd_cm_patch_carries_the_script_verbatim() -> None:
    patch = yaml.safe_load(ARGOCD_CM.read_text())
    assert patch["data"][HEALTH_KEY] == SCRIPT.read_text()
