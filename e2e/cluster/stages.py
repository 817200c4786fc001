"""kwok stage configuration: upstream stages read from the kwok module, plus our own.

Upstream's stage files ship inside the ``sigs.k8s.io/kwok`` Go module under
``kustomize/stage/``; they are read from Go's module cache at run time (never copied into
this repository). Our own stages live next to this file in ``stages/``. Upstream's
``pod-ready`` gets one change at run time: it skips pods that our stages own (those
labelled ``magistral.dev/sim-unready=true`` or ``magistral.dev/sim-fail=true``, annotated
``magistral.dev/sim-startup``, with a container env ``E2E_SIM_FAIL=true`` or
``E2E_SIM_READINESS=supervisor``, and router pods, labelled
``app.kubernetes.io/component=router``).
"""

from __future__ import annotations

from pathlib import Path

from e2e.cluster.binaries import go_module_dir
from e2e.cluster.versions import KWOK

SIM_UNREADY_LABEL = "magistral.dev/sim-unready"
"""Label a pod ``true`` to keep it Running but not Ready."""
SIM_FAIL_LABEL = "magistral.dev/sim-fail"
"""Label a pod ``true`` to make it fail (crash-loop, or phase Failed with restartPolicy Never)."""
SIM_FAIL_ENV = "E2E_SIM_FAIL"  # not MAGISTRAL_*: endpoints may not set those (env_policy)
"""Give a pod's container this environment variable ``true`` to make it crash-loop
(``restartCount`` 3); endpoints set it through ``spec.runtime.env``."""
SIM_STARTUP_ANNOTATION = "magistral.dev/sim-startup"
"""Annotate a pod with a Go duration (``"45s"``): Running but not Ready for that long."""
SIM_READINESS_ENV = "E2E_SIM_READINESS"
"""Give a pod's container this environment variable ``supervisor`` and it stays Running but not
Ready until labelled :data:`SIM_READY_LABEL` ``true``: the pod supervisor plays its readiness
probe (``e2e/engine/supervisor.py``). Fixed at creation, so no stage can show it Ready first."""
SIM_READINESS_SUPERVISOR = "supervisor"
SIM_TTFT_MS_ENV = "E2E_SIM_TTFT_MS"
"""Give a pod's container this environment variable (milliseconds, >= 0) and its simulator
runs with ``--ttft-ms``: the fixed part of every request's time to first token. Read by the
pod supervisor (``e2e/engine/pods.py``), not by kwok; like :data:`SIM_FAIL_ENV`, not
``MAGISTRAL_*`` so that endpoints can set it through ``spec.runtime.env``."""
SIM_ITL_MS_ENV = "E2E_SIM_ITL_MS"
"""Milliseconds (> 0): the simulator's ``--itl-ms``, the inter-token latency at batch 1."""
SIM_ERROR_RATE_ENV = "E2E_SIM_ERROR_RATE"
"""A share in [0, 1]: the simulator's ``--error-rate``, the requests its engine fails (HTTP
500, or an SSE error event; ``vllm:request_success_total{finished_reason="error"}``)."""
SIM_READY_LABEL = "magistral.dev/sim-ready"
"""Set ``true`` by the pod supervisor on a gated pod (:data:`SIM_READINESS_ENV`, or a router pod)
whose readiness probe passed; from then on :data:`SIM_UNREADY_LABEL` turns it unready and Ready
again."""
COMPONENT_LABEL = "app.kubernetes.io/component"
ROUTER_COMPONENT = "router"
"""A pod labelled :data:`COMPONENT_LABEL` ``router`` (the operator's router pods) is gated as if
it had :data:`SIM_READINESS_ENV` ``supervisor``, without any env: Running but not Ready until
the pod supervisor, which runs its containers as processes, labels it :data:`SIM_READY_LABEL`."""

UPSTREAM_STAGES: tuple[str, ...] = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
"""Stage files used from upstream, relative to ``kustomize/stage/`` in the kwok module."""

OWN_STAGES_DIR = Path(__file__).with_name("stages")

_EXCLUDE_SIMULATED = "".join(
    f"    - key: '.metadata.labels[\"{label}\"]'\n"
    "      operator: 'NotIn'\n"
    "      values:\n"
    "      - 'true'\n"
    for label in (SIM_UNREADY_LABEL, SIM_FAIL_LABEL)
) + (
    f"    - key: '.metadata.annotations[\"{SIM_STARTUP_ANNOTATION}\"]'\n"
    "      operator: 'DoesNotExist'\n"
    f"    - key: '.spec.containers.[].env.[]? | select(.name == \"{SIM_FAIL_ENV}\") | .value'\n"
    "      operator: 'NotIn'\n"
    "      values:\n"
    "      - 'true'\n"
    "    - key: '.spec.containers.[].env.[]? | "
    f'select(.name == "{SIM_READINESS_ENV}") | .value\'\n'
    "      operator: 'NotIn'\n"
    "      values:\n"
    f"      - '{SIM_READINESS_SUPERVISOR}'\n"
    f"    - key: '.metadata.labels[\"{COMPONENT_LABEL}\"]'\n"
    "      operator: 'NotIn'\n"
    "      values:\n"
    f"      - '{ROUTER_COMPONENT}'\n"
)

_PATCHES: dict[str, str] = {"pod/fast/pod-ready.yaml": _EXCLUDE_SIMULATED}
"""Upstream file -> match expressions appended to its selector's ``matchExpressions``."""


def patch_stage(text: str, extra_expressions: str, *, source: str) -> str:
    """Append ``extra_expressions`` to the single ``matchExpressions:`` list in ``text``."""
    marker = "\n    matchExpressions:\n"
    if text.count(marker) != 1:
        raise ValueError(
            f"cannot patch kwok stage {source}: expected exactly one 'matchExpressions:' "
            "block at 4-space indent; has the upstream file changed shape?"
        )
    return text.replace(marker, marker + extra_expressions, 1)


def upstream_stage_dir() -> Path:
    """``kustomize/stage`` inside the pinned kwok module (downloaded into Go's cache if needed)."""
    path = go_module_dir(KWOK.module, KWOK.version) / "kustomize" / "stage"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{KWOK.module}@{KWOK.version} has no kustomize/stage directory at {path}"
        )
    return path


def stage_documents(upstream_dir: Path | None = None) -> list[str]:
    """All stage YAML documents kwok should load, upstream first, ours after."""
    base = upstream_dir or upstream_stage_dir()
    docs: list[str] = []
    for rel in UPSTREAM_STAGES:
        text = (base / rel).read_text()
        if rel in _PATCHES:
            text = patch_stage(text, _PATCHES[rel], source=rel)
        docs.append(text)
    for path in sorted(OWN_STAGES_DIR.glob("*.yaml")):
        docs.append(path.read_text())
    return docs


def write_kwok_config(path: Path, upstream_dir: Path | None = None) -> Path:
    """Write every stage into one multi-document file for ``kwok --config``."""
    parts = [doc.strip() + "\n" for doc in stage_documents(upstream_dir)]
    path.write_text("---\n".join(parts))
    return path
