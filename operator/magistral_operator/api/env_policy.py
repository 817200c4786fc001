"""Which `spec.runtime.env` variables an endpoint may set (pure).

A denylist by name, refused whatever the value: a value check would have to read each
variable exactly as its reader does (vLLM reads VLLM_SERVER_DEV_MODE as `bool(int(v))`, so
`01`, ` 1`, `+1`, `-1` and `1_0` all turn it on; VLLM_ALLOW_RUNTIME_LORA_UPDATING as
`v.strip().lower() in ("1", "true")`; others as `== "1"` or `bool(int(v))`, vllm/envs.py in
0.33.0), and no value of these variables is one the operator needs from a user. An allowlist
was rejected: vLLM 0.33.0 reads over 300 variables, most of them harmless tuning knobs
(NCCL_*, VLLM_*_TIMEOUT, ...) that the escape hatch exists for. Names are compared without
case (Linux treats them as distinct, so this only refuses more).

Refused:

* what the operator sets in the pod (render/workload.py `_env`): HOME, HF_HOME,
  VLLM_CACHE_ROOT, TRITON_CACHE_DIR, MAGISTRAL_RUNTIME_CONFIG, VLLM_API_KEY, HF_TOKEN,
  HF_HUB_OFFLINE — a second entry with the same name makes server-side apply fail — and the
  image's cache locations (TORCHINDUCTOR_CACHE_DIR, XDG_CACHE_HOME), which must stay on the
  cache volume;
* code and library injection: LD_* (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT), PYTHON*
  (PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONWARNINGS imports the warning categories it
  names, PYTHONBREAKPOINT), PATH (`vllm` is found through it), BASH_ENV and ENV;
  VLLM_PLUGINS (loads plugins that can add options and code the operator never checked)
  and VLLM_LOGGING_CONFIG_PATH (a dictConfig can instantiate any callable);
* the model source: every HF_* variable (endpoint, cache, token, offline mode, transfer
  backends), HUGGING_FACE_* and HUGGINGFACE_* (legacy token and cache names), MODELSCOPE_*,
  VLLM_USE_MODELSCOPE (downloads from ModelScope instead of the Hub) and
  VLLM_MODEL_REDIRECT_PATH (serves another directory for the model id): spec.model decides
  what is served and from where;
* endpoints, frontends and insecure modes: VLLM_SERVER_DEV_MODE (development endpoints such
  as /reset_prefix_cache, /sleep, /collective_rpc), VLLM_ALLOW_RUNTIME_LORA_UPDATING
  (/v1/load_lora_adapter loads code-bearing adapters from anywhere), VLLM_ENABLE_COHERE_API
  and VLLM_ENABLE_RESPONSES_API_STORE (API surfaces the runtime's middleware was not built
  for), VLLM_USE_RUST_FRONTEND and VLLM_RUST_FRONTEND_PATH (a separate frontend binary,
  without the runtime's middleware), VLLM_ALLOW_INSECURE_SERIALIZATION (pickle between
  processes), VLLM_ALLOW_LONG_MAX_MODEL_LEN (skips the context-length check
  spec.runtime.maxModelLen relies on), VLLM_DEBUG_LOG_API_SERVER_RESPONSE (logs every
  response body);
* GPU assignment: CUDA_VISIBLE_DEVICES and NVIDIA_* (with the NVIDIA container runtime,
  NVIDIA_VISIBLE_DEVICES=all can hand the container every GPU of the node);
* telemetry, which the image turns off: VLLM_NO_USAGE_STATS, VLLM_DO_NOT_TRACK, DO_NOT_TRACK.

Proxies and CA bundles (HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE, ...) stay allowed: egress
through a corporate proxy is a common need and the weights are still checked by the Hub
client; a bundle can only name a file of the image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FIELD = "spec.runtime.env"

_OPERATOR = "the operator sets it in the pod (a second entry breaks server-side apply)"
_CACHE = "the image keeps this cache on the cache volume"
_INJECTION = "it can load code into the server"
_SOURCE = "spec.model decides what is served and from where"
_SURFACE = "it opens endpoints or modes the operator does not guard"
_GPUS = "the device plugin assigns the pod's GPUs"
_TELEMETRY = "the image turns telemetry off"

REFUSED_ENV: dict[str, str] = {
    "HOME": _OPERATOR,
    "HF_HOME": _OPERATOR,
    "VLLM_CACHE_ROOT": _OPERATOR,
    "TRITON_CACHE_DIR": _OPERATOR,
    "MAGISTRAL_RUNTIME_CONFIG": _OPERATOR,
    "VLLM_API_KEY": _OPERATOR + "; set spec.auth.apiKeySecretRef",
    "HF_TOKEN": _OPERATOR + "; set spec.model.source.hub.tokenSecretRef",
    "HF_HUB_OFFLINE": _OPERATOR,
    "TORCHINDUCTOR_CACHE_DIR": _CACHE,
    "XDG_CACHE_HOME": _CACHE,
    "PATH": _INJECTION,
    "BASH_ENV": _INJECTION,
    "ENV": _INJECTION,
    "VLLM_PLUGINS": _INJECTION,
    "VLLM_LOGGING_CONFIG_PATH": _INJECTION,
    "VLLM_USE_MODELSCOPE": _SOURCE,
    "VLLM_MODEL_REDIRECT_PATH": _SOURCE,
    "VLLM_SERVER_DEV_MODE": _SURFACE,
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": _SURFACE,
    "VLLM_ENABLE_COHERE_API": _SURFACE,
    "VLLM_ENABLE_RESPONSES_API_STORE": _SURFACE,
    "VLLM_USE_RUST_FRONTEND": _SURFACE,
    "VLLM_RUST_FRONTEND_PATH": _SURFACE,
    "VLLM_ALLOW_INSECURE_SERIALIZATION": _SURFACE,
    "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "set spec.runtime.maxModelLen within its limit",
    "VLLM_DEBUG_LOG_API_SERVER_RESPONSE": "it logs every response body",
    "CUDA_VISIBLE_DEVICES": _GPUS,
    "VLLM_NO_USAGE_STATS": _TELEMETRY,
    "VLLM_DO_NOT_TRACK": _TELEMETRY,
    "DO_NOT_TRACK": _TELEMETRY,
}
REFUSED_ENV_PREFIXES: dict[str, str] = {
    "LD_": _INJECTION,
    "PYTHON": _INJECTION,
    "HF_": _SOURCE,
    "HUGGING_FACE_": _SOURCE,
    "HUGGINGFACE_": _SOURCE,
    "MODELSCOPE_": _SOURCE,
    "MAGISTRAL_": "the runtime's own settings come from its config file",
    "NVIDIA_": _GPUS,
}


def env_refusal(name: str) -> str | None:
    """Why a variable may not be set, or None."""
    upper = name.upper()
    if upper in REFUSED_ENV:
        return REFUSED_ENV[upper]
    for prefix, reason in REFUSED_ENV_PREFIXES.items():
        if upper.startswith(prefix):
            return reason
    return None


def env_problems(env: Sequence[tuple[str, str]]) -> list[str]:
    """What is wrong with these (name, value) pairs of `spec.runtime.env`."""
    problems: list[str] = []
    first: dict[str, int] = {}
    for i, (name, _value) in enumerate(env):
        reason = env_refusal(name)
        if reason is not None:
            problems.append(f"{FIELD}[{i}]: {name} may not be set: {reason}")
        elif name in first:
            problems.append(
                f"{FIELD}[{i}]: {name} is already set by {FIELD}[{first[name]}] "
                "(a second entry breaks server-side apply)"
            )
        first.setdefault(name, i)
    return problems


def _cel_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in sorted(items)) + "]"


# On the schema of one entry (`self` is {name, value}); the API server names the index.
ENV_VAR_CEL_RULES: list[dict[str, str]] = [
    {
        "rule": f"!(self.name.upperAscii() in {_cel_list(REFUSED_ENV)})",
        "message": f"{FIELD}[*]: this variable may not be set: the operator sets it, or it "
        "opens endpoints, injects code, redirects the model source, reassigns GPUs or turns "
        "telemetry on",
    },
    {
        "rule": f"!{_cel_list(REFUSED_ENV_PREFIXES)}"
        ".exists(p, self.name.upperAscii().startsWith(p))",
        "message": f"{FIELD}[*]: variables starting with "
        + ", ".join(sorted(REFUSED_ENV_PREFIXES))
        + " may not be set (code injection, model source, GPU assignment, runtime settings)",
    },
]
# On the list (`self` is the list of entries): the same checks, and no duplicate names.
ENV_CEL_RULES: list[dict[str, str]] = [
    {
        "rule": "self.all(e, " + rule["rule"].replace("self.name", "e.name") + ")",
        "message": rule["message"].replace("[*]: ", ": an entry: "),
    }
    for rule in ENV_VAR_CEL_RULES
] + [
    {
        "rule": "self.all(e, self.exists_one(f, f.name == e.name))",
        "message": f"{FIELD}: each name may appear once (a second entry breaks server-side apply)",
    }
]
