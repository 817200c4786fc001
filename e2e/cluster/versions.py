"""Pinned upstream versions of every binary the local cluster uses.

This is the one place to bump a version. Each entry names a Go module, the version
served by the Go module proxy, and the packages (``main`` packages) built from it.
``e2e/cluster/binaries.py`` builds them into a cache keyed by these versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Component:
    """One upstream Go module and the binaries built from it."""

    name: str
    """Cache key prefix and the name used in progress output, e.g. ``kubernetes``."""
    module: str
    """Go module path, e.g. ``k8s.io/kubernetes``."""
    version: str
    """Module version as served by the Go module proxy, e.g. ``v1.36.3``."""
    binaries: dict[str, str]
    """Binary name -> Go package path of its ``main`` package."""
    version_args: dict[str, tuple[str, ...]]
    """Binary name -> arguments that print its version (checked on a warm cache)."""
    version_text: str
    """Text that the version output of every binary must contain."""
    ldflags_x: dict[str, str] = field(default_factory=dict)
    """``-X`` linker assignments (symbol -> value) so binaries report their true version."""
    staging_version: str | None = None
    """If set, upstream ``replace X => ./local/path`` directives are rewritten to
    ``X => X <staging_version>`` (k8s.io/kubernetes publishes its staging modules as
    ``v0.<minor>.<patch>``); otherwise local-path replaces are dropped."""
    optional: bool = False
    """An optional component that fails to build is reported but does not fail the run."""

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
INFERENCE_SIM_VERSION = "v0.8.0"
"""Unverified: the Go module proxy reachable here answers 403 ("This module version is not
available") for every version of github.com/llm-d/llm-d-inference-sim, so it cannot be
built on this workplace; it stays optional and is built only when named explicitly."""


def _k8s_ldflags(version: str) -> dict[str, str]:
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
    }
    flags: dict[str, str] = {}
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for var, value in values.items():
            flags[f"{pkg}.{var}"] = value
    return flags


def _staging(version: str) -> str:
    """k8s.io/kubernetes vX.Y.Z publishes its staging modules as v0.Y.Z."""
    _, minor, patch = version.lstrip("v").split(".", 2)
    return f"v0.{minor}.{patch}"


KUBERNETES = Component(
    name="kubernetes",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    binaries={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    },
    version_args={
        "kube-apiserver": ("--version",),
        "kube-controller-manager": ("--version",),
        "kube-scheduler": ("--version",),
        "kubectl": ("version", "--client"),
    },
    version_text=KUBERNETES_VERSION,
    ldflags_x=_k8s_ldflags(KUBERNETES_VERSION),
    staging_version=_staging(KUBERNETES_VERSION),
)

ETCD = Component(
    name="etcd",
    module="go.etcd.io/etcd/server/v3",
    version=ETCD_VERSION,
    # The etcd server's main package is the root of its server module.
    binaries={"etcd": "go.etcd.io/etcd/server/v3"},
    version_args={"etcd": ("--version",)},
    version_text=ETCD_VERSION.lstrip("v"),
)

KWOK = Component(
    name="kwok",
    module="sigs.k8s.io/kwok",
    version=KWOK_VERSION,
    binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    version_args={"kwok": ("--version",)},
    version_text=KWOK_VERSION,
    ldflags_x={"sigs.k8s.io/kwok/pkg/consts.Version": KWOK_VERSION},
)

HELM = Component(
    name="helm",
    module="helm.sh/helm/v3",
    version=HELM_VERSION,
    binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
    version_args={"helm": ("version", "--short")},
    version_text=HELM_VERSION,
    ldflags_x={
        "helm.sh/helm/v3/internal/version.version": HELM_VERSION,
        "helm.sh/helm/v3/internal/version.gitTreeState": "clean",
        # Helm's Makefile derives these from its client-go (v0.37.x for helm v3.22.0).
        "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor": "1",
        "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor": "37",
        "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor": "1",
        "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor": "37",
    },
)

INFERENCE_SIM = Component(
    name="llm-d-inference-sim",
    module="github.com/llm-d/llm-d-inference-sim",
    version=INFERENCE_SIM_VERSION,
    binaries={
        "llm-d-inference-sim": "github.com/llm-d/llm-d-inference-sim/cmd/llm-d-inference-sim"
    },
    version_args={"llm-d-inference-sim": ("--help",)},
    version_text="",
    optional=True,
)

COMPONENTS: tuple[Component, ...] = (KUBERNETES, ETCD, KWOK, HELM)
"""Built by default (``python -m e2e.cluster.binaries``)."""
OPTIONAL_COMPONENTS: tuple[Component, ...] = (INFERENCE_SIM,)
"""Built only when named: ``python -m e2e.cluster.binaries llm-d-inference-sim``."""
CLUSTER_COMPONENTS: tuple[Component, ...] = (KUBERNETES, ETCD, KWOK)
"""What ``LocalCluster`` needs."""
