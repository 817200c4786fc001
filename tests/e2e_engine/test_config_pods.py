"""Pure parts: hardware-derived defaults, `vllm serve` translation, pod decisions."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from e2e.cluster.stages import SIM_ERROR_RATE_ENV, SIM_ITL_MS_ENV, SIM_TTFT_MS_ENV
from e2e.engine import pods
from e2e.engine.config import (
    API_KEY_ENV,
    GPUS,
    config_from_args,
    derive_profile,
    gpu_spec,
    simulator_args_from_vllm,
)
from e2e.engine.pods import SecretKey, decide, parse_go_duration, termination

# What magistral_runtime.launcher.build_vllm_args renders for a typical endpoint.
VLLM_LINE = (
    "vllm serve /models/Magistral-Small-2506 --served-model-name magistral-small "
    "--host 0.0.0.0 --port 8000 --tokenizer-mode mistral --config-format mistral "
    "--load-format mistral --tool-call-parser mistral --enable-auto-tool-choice "
    "--tensor-parallel-size 2 --max-model-len 40960 --gpu-memory-utilization 0.9 "
    "--max-num-seqs 48 --override-generation-config "
    + shlex.quote('{"temperature":0.7,"top_p":0.95}')
    + " --disable-access-log-for-endpoints /health,/metrics,/ping --shutdown-timeout 30"
)


def test_shared_constants_match_the_operator_and_runtime() -> None:
    from magistral_operator.api import labels
    from magistral_runtime import config as runtime_config

    assert labels.ARGS_ANNOTATION == pods.ARGS_ANNOTATION
    assert labels.MANAGED_BY_SELECTOR == pods.MANAGED_BY_SELECTOR
    assert runtime_config.API_KEY_ENV == API_KEY_ENV
    assert runtime_config.CONFIG_ENV == pods.RUNTIME_CONFIG_ENV
    assert runtime_config.CONFIG_PATH == pods.RUNTIME_CONFIG_PATH


def test_h100_defaults_are_the_documented_ones() -> None:
    profile = derive_profile(gpu=gpu_spec(None))
    assert profile.itl_ms == pytest.approx(15.0, abs=0.2)
    assert profile.prefill_ms_per_token == pytest.approx(0.1, abs=0.005)
    assert 150_000 < profile.kv_cache_tokens < 175_000
    assert profile.default_max_num_seqs == 1024
    config = config_from_args([], environ={})
    assert (config.ttft_ms, config.max_model_len, config.api_keys) == (150.0, 40960, ())
    assert config.problems() == []


def test_profile_scales_with_gpu_and_parallelism() -> None:
    h100, l40s = GPUS["NVIDIA-H100-80GB-HBM3"], GPUS["NVIDIA-L40S"]
    tp1 = derive_profile(gpu=h100)
    tp2 = derive_profile(gpu=h100, tensor_parallel_size=2)
    assert tp2.itl_ms < tp1.itl_ms
    assert tp2.kv_cache_tokens > 2 * tp1.kv_cache_tokens
    assert derive_profile(gpu=h100, kv_cache_dtype="fp8").kv_cache_tokens > tp1.kv_cache_tokens
    assert derive_profile(gpu=h100, fp8_weights=True).itl_ms < tp1.itl_ms
    assert derive_profile(gpu=l40s).kv_cache_tokens == 0  # 47 GB of weights on 45 GiB
    assert derive_profile(gpu=l40s, tensor_parallel_size=2).kv_cache_tokens > 40960
    assert derive_profile(gpu=l40s).default_max_num_seqs == 256
    assert config_from_args(["--gpu", "NVIDIA-L40S"], environ={}).problems()


def test_explicit_flags_beat_the_profile_and_env_gives_the_key() -> None:
    config = config_from_args(
        ["--itl-ms", "3", "--kv-cache-tokens", "50000", "--max-num-seqs", "4"],
        environ={API_KEY_ENV: "sk-env"},
    )
    assert (config.itl_ms, config.kv_cache_tokens, config.max_num_seqs) == (3.0, 50000, 4)
    assert config.api_keys == ("sk-env",)
    assert config_from_args(["--api-key", "sk-flag"], environ={API_KEY_ENV: "x"}).api_keys == (
        "sk-flag",
    )


def test_vllm_serve_line_translates_to_simulator_flags() -> None:
    args = simulator_args_from_vllm(shlex.split(VLLM_LINE))
    assert args == [
        "--model", "/models/Magistral-Small-2506",
        "--served-model-name", "magistral-small",
        "--tensor-parallel-size", "2",
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--max-num-seqs", "48",
        "--shutdown-timeout", "30",
    ]  # fmt: skip
    config = config_from_args([*args, "--host", "127.64.0.9"], environ={})
    assert config.served_model_name == "magistral-small"
    assert (config.max_num_seqs, config.tensor_parallel_size) == (48, 2)
    assert config.shutdown_timeout_s == 30
    short = ["vllm", "serve", "m", "-tp=4", "--served-model-name", "a", "b"]
    assert simulator_args_from_vllm(short) == [
        "--model", "m", "--tensor-parallel-size", "4", "--served-model-name", "a", "b",
    ]  # fmt: skip


def test_go_durations() -> None:
    assert parse_go_duration("45s") == 45
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="Go duration"):
        parse_go_duration("45 seconds")


# ------------------------------------------------------------------------------ pods

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def pod(**changes: Any) -> dict[str, Any]:
    started = (NOW - timedelta(seconds=10)).isoformat().replace("+00:00", "Z")
    base: dict[str, Any] = {
        "metadata": {
            "name": "ep-0",
            "namespace": "ns",
            "uid": "u1",
            "labels": {},
            "annotations": {pods.ARGS_ANNOTATION: VLLM_LINE},
        },
        "spec": {
            "nodeName": "h100-on-demand-0",
            "containers": [
                {
                    "name": "vllm",
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "env": [
                        {
                            "name": API_KEY_ENV,
                            "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api"}},
                        }
                    ],
                    "lifecycle": {"preStop": {"sleep": {"seconds": 10}}},
                }
            ],
            "terminationGracePeriodSeconds": 50,
        },
        "status": {
            "phase": "Running",
            "podIP": "127.64.3.7",
            "containerStatuses": [{"name": "vllm", "state": {"running": {"startedAt": started}}}],
        },
    }
    for path, value in changes.items():
        target = base
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return base


def test_running_pod_gets_a_simulator() -> None:
    sim = decide(pod(), now=NOW).sim
    assert sim is not None
    assert (sim.ip, sim.port, sim.served_model_name) == ("127.64.3.7", 8000, "magistral-small")
    assert sim.api_key is None
    assert sim.api_key_secret == SecretKey("keys", "api")
    assert "--max-num-seqs" in sim.sim_args
    assert sim.healthy
    assert sim.startup_delay_s == 0


def test_literal_key_unready_label_and_startup_annotation() -> None:
    p = pod()
    p["spec"]["containers"][0]["env"] = [{"name": API_KEY_ENV, "value": "sk-lit"}]
    p["metadata"]["labels"]["magistral.dev/sim-unready"] = "true"
    p["metadata"]["annotations"]["magistral.dev/sim-startup"] = "45s"
    sim = decide(p, now=NOW).sim
    assert sim is not None
    assert (sim.api_key, sim.healthy, sim.startup_delay_s) == ("sk-lit", False, 35.0)


UNNAMED_PORT = [{"name": "vllm", "ports": [{"containerPort": 8000}]}]
CRASHING = [{"name": "vllm", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status__phase": "Pending"}, "phase Pending"),
        ({"status__podIP": ""}, "no pod IP"),
        ({"metadata__deletionTimestamp": "2026-11-29T12:00:00Z"}, "terminating"),
        ({"spec__containers": UNNAMED_PORT}, "no container port"),
        ({"status__containerStatuses": CRASHING}, "CrashLoopBackOff"),
    ],
)
def test_no_simulator_when(changes: dict[str, Any], reason: str) -> None:
    decision = decide(pod(**changes), now=NOW)
    assert decision.sim is None
    assert reason in decision.reason
    assert not decision.refused


def test_non_loopback_pod_ip_is_refused() -> None:
    decision = decide(pod(status__podIP="10.0.0.5"), now=NOW)
    assert decision.sim is None
    assert decision.refused


def test_termination_plan() -> None:
    assert termination(pod()) == pods.Termination(prestop_s=10, grace_s=50)
    deleted = pod(metadata__deletionGracePeriodSeconds=0)
    assert termination(deleted).grace_s == 0


# ------------------------------------------------------------- slow or failing revisions


def with_env(*entries: dict[str, Any]) -> dict[str, Any]:
    p = pod()
    p["spec"]["containers"][0]["env"] += list(entries)
    return p


def test_env_knobs_become_simulator_flags() -> None:
    """E2E_SIM_TTFT_MS, E2E_SIM_ITL_MS and E2E_SIM_ERROR_RATE (literal container env, what
    spec.runtime.env renders) follow the vllm serve flags, and the simulator reads them."""
    plain = decide(pod(), now=NOW).sim
    sim = decide(
        with_env(
            {"name": SIM_TTFT_MS_ENV, "value": "400"},
            {"name": SIM_ITL_MS_ENV, "value": " 45.5 "},
            {"name": SIM_ERROR_RATE_ENV, "value": "0.2"},
        ),
        now=NOW,
    ).sim
    assert plain is not None
    assert sim is not None
    assert sim.sim_args == plain.sim_args
    assert sim.knob_args == ("--ttft-ms", "400.0", "--itl-ms", "45.5", "--error-rate", "0.2")
    assert sim.warnings == ()
    assert sim.fingerprint() != plain.fingerprint()  # a different simulator process
    # The supervisor puts the knobs last: they win over its own defaults (e.g. a fast ITL).
    config = config_from_args([*sim.sim_args, "--itl-ms", "5", *sim.knob_args], environ={})
    assert (config.ttft_ms, config.itl_ms, config.error_rate) == (400.0, 45.5, 0.2)
    assert config.max_num_seqs == 48  # the vllm serve flags still apply


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (SIM_TTFT_MS_ENV, "-1"),
        (SIM_TTFT_MS_ENV, "slow"),
        (SIM_ITL_MS_ENV, "0"),
        (SIM_ITL_MS_ENV, "inf"),
        (SIM_ERROR_RATE_ENV, "1.5"),
        (SIM_ERROR_RATE_ENV, "10%"),
        (SIM_ERROR_RATE_ENV, "nan"),
    ],
)
def test_invalid_env_knob_is_ignored_with_a_warning(name: str, text: str) -> None:
    """Ignored, as an unparsable sim-startup is, and named for the supervisor's log; the
    other knobs still apply and the pod still gets its simulator."""
    other = SIM_ITL_MS_ENV if name != SIM_ITL_MS_ENV else SIM_TTFT_MS_ENV
    decision = decide(
        with_env({"name": name, "value": text}, {"name": other, "value": "20"}), now=NOW
    )
    assert decision.sim is not None
    flag = pods.SIM_ENV_FLAGS[name][0]
    assert flag not in decision.sim.knob_args
    assert pods.SIM_ENV_FLAGS[other][0] in decision.sim.knob_args
    (warning,) = decision.sim.warnings
    assert name in warning
    assert repr(text) in warning


def test_env_knobs_need_a_literal_value() -> None:
    ref = {"configMapKeyRef": {"name": "knobs", "key": "rate"}}
    sim = decide(with_env({"name": SIM_ERROR_RATE_ENV, "valueFrom": ref}), now=NOW).sim
    assert sim is not None
    assert "--error-rate" not in sim.knob_args


def test_env_knob_names_pass_the_operator_env_policy() -> None:
    """Endpoints set them through spec.runtime.env, which refuses MAGISTRAL_* and others."""
    from magistral_operator.api import env_policy

    for name in pods.SIM_ENV_FLAGS:
        assert not name.startswith("MAGISTRAL_")
        assert env_policy.env_refusal(name) is None, name
