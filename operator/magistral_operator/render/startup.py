"""The start-up probe budget, derived from the weights and the cache state (pure).

A replica's start is image pull + weights download (when the cache is cold) + weights read +
engine initialisation (torch.compile, CUDA graphs); the budget is that sum times a safety
factor, with every number from the operator config (`startup:`) so platform teams can set what
they measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api.config import StartupModel
from ..api.spec import CacheType, ModelSpec
from ..sizing.profiles import GB

PROBE_PERIOD_SECONDS = 10


@dataclass(frozen=True)
class StartupBudget:
    """Seconds a replica may take to start, with the derivation."""

    seconds: int
    explanation: str

    @property
    def failure_threshold(self) -> int:
        """startupProbe failureThreshold for PROBE_PERIOD_SECONDS."""
        return max(1, math.ceil(self.seconds / PROBE_PERIOD_SECONDS))


def startup_budget(
    *, model: ModelSpec, weight_bytes: float, startup: StartupModel, cache_warm: bool
) -> StartupBudget:
    """Budget for one replica's start.

    `cache_warm` says whether the weights are known to be in a shared cache already (a pvc
    cache on which a replica of this model has started before). emptyDir and ephemeral caches
    are new with every pod, so they are always cold.
    """
    from_pvc = model.source.pvc is not None
    shared_cache = model.cache.type == CacheType.PVC
    download = 0.0
    cache_state = "weights on a PVC"
    if not from_pvc:
        if shared_cache and cache_warm:
            cache_state = "warm shared cache"
        else:
            cache_state = "cold cache" if not shared_cache else "shared cache, not yet warm"
            download = weight_bytes / (startup.hub_download_mbps * 1e6)
    read = weight_bytes / (startup.volume_read_mbps * 1e6)
    total = startup.image_pull_seconds + download + read + startup.engine_init_seconds
    seconds = math.ceil(total * startup.safety_factor)
    explanation = (
        f"{seconds}s = ({startup.image_pull_seconds:g}s image pull + {download:.0f}s download "
        f"of {weight_bytes / GB:.1f} GB ({cache_state}) + {read:.0f}s weights read + "
        f"{startup.engine_init_seconds:g}s engine init) x {startup.safety_factor:g}"
    )
    return StartupBudget(seconds=seconds, explanation=explanation)
