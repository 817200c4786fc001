"""Installing the project into a cluster: CRDs, the operator's RBAC (from the Helm chart)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from e2e.cluster.binaries import ensure_binaries

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "magistral-operator"
CRD_DIR = ROOT / "crds"
OPERATOR_NAMESPACE = "magistral-system"
RELEASE = "magistral-operator"
SERVICE_ACCOUNT = "magistral-operator"  # the chart's fullname for this release


def tool(name: str) -> Path:
    """A binary built by the harness (kubectl, helm, ...)."""
    return ensure_binaries()[name]


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run kubectl against `kubeconfig`; raise with its stderr on failure."""
    done = subprocess.run(
        [str(tool("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def table_row(header: str, row: str) -> dict[str, str]:
    """A row of a kubectl table by column header. Each value starts where its header does; an
    empty value is blank space, so splitting the row on spaces would shift the rest."""
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {
        header[start:end].strip(): row[start:end].strip()
        for start, end in zip(starts, ends, strict=True)
    }


def install_crds(kubeconfig: Path) -> None:
    """Apply the generated CRDs and wait until they are Established."""
    kubectl(
        kubeconfig, "apply", "--server-side", "--field-manager=magistral-e2e", "-f", str(CRD_DIR)
    )
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/magistralendpoints.magistral.dev",
    )


def helm_template(*args: str, release: str = RELEASE, namespace: str = OPERATOR_NAMESPACE) -> str:
    """`helm template` of the chart with extra arguments."""
    done = subprocess.run(
        [str(tool("helm")), "template", release, str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return done.stdout


def install_operator_rbac(
    kubeconfig: Path, *values: str, namespace: str = OPERATOR_NAMESPACE
) -> None:
    """The chart's ServiceAccount and RBAC, exactly as `helm install` would create them.

    `values`: extra `helm template` arguments, e.g. ``"--set", "leaderElection.enabled=true"``.
    """
    kubectl(kubeconfig, "create", "namespace", namespace, check=False)
    manifests = helm_template(
        "--show-only=templates/serviceaccount.yaml",
        "--show-only=templates/rbac.yaml",
        *values,
        namespace=namespace,
    )
    kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--field-manager=magistral-e2e",
        "-f",
        "-",
        stdin=manifests,
    )
