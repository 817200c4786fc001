"""Environment variables the runtime refuses to start vLLM with, read the way vLLM reads them.

The operator refuses these names in `spec.runtime.env` outright; this is the second line,
for an environment that reaches the pod some other way (an image, a mutating webhook).
Each variable is parsed with vLLM 0.33.0's own reader (vllm/envs.py), so every spelling
vLLM takes as "on" is refused: `bool(int(v))` is on for `1`, `01`, ` 1`, `+1`, `-1`, `1_0`
and other digits (int() accepts surrounding whitespace, a sign, underscores between digits
and non-ASCII digits), and raises for `true` or an empty string, which would crash vLLM at
start-up, so those are refused too. Values that read as off (`0`, `00`, ` 0 `) are allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


def int_flag(value: str) -> bool:
    """vLLM's `bool(int(os.getenv(name, "0")))`; raises ValueError where vLLM would."""
    return bool(int(value))


def word_flag(value: str) -> bool:
    """vLLM's `os.environ.get(name, "0").strip().lower() in ("1", "true")`."""
    return value.strip().lower() in ("1", "true")


# name -> (vLLM's reader, what turning it on does)
GUARDED_ENV: dict[str, tuple[Callable[[str], bool], str]] = {
    "VLLM_SERVER_DEV_MODE": (int_flag, "exposes development endpoints"),
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": (
        word_flag,
        "lets clients load LoRA adapters at run time",
    ),
    "VLLM_USE_RUST_FRONTEND": (
        int_flag,
        "replaces the API server the runtime's middleware runs in",
    ),
    "VLLM_ALLOW_INSECURE_SERIALIZATION": (int_flag, "allows pickle between vLLM's processes"),
}


def guarded_env_problems(env: Mapping[str, str]) -> list[str]:
    """Each guarded variable that vLLM would read as on (or fail to read)."""
    problems: list[str] = []
    for name, (read, effect) in GUARDED_ENV.items():
        if name not in env:
            continue
        value = env[name]
        try:
            on = read(value)
        except ValueError:
            problems.append(f"{name}={value!r}: vLLM cannot read this value and would not start")
            continue
        if on:
            problems.append(f"{name}={value!r} {effect}; it is refused here")
    return problems
