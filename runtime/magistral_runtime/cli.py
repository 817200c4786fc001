"""`magistral-runtime serve`: validate the mounted runtime config and exec `vllm serve`.

`magistral-runtime front`: the router front in each router pod (magistral_runtime.front).

Exit status 2 with a message naming the field when the config is invalid. The API key is
not put on the command line (where `ps` would show it): vLLM 0.33.0 reads it from the
VLLM_API_KEY environment variable itself (vllm/envs.py; used by
vllm/entrypoints/serve/middleware/register.py when `--api-key` is absent).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .config import (
    API_KEY_ENV,
    CONFIG_ENV,
    CONFIG_PATH,
    RuntimeConfig,
    RuntimeConfigError,
    load_runtime_config,
)
from .env_policy import guarded_env_problems
from .front.config import FrontConfigError
from .front.config import add_arguments as add_front_arguments
from .front.config import config_from_args as front_config_from_args
from .launcher import build_serve_argv
from .system_prompt import SystemPromptError, fetch_model_prompt, load_system_prompt

EXIT_CONFIG = 2

Exec = Callable[[str, list[str]], object]


def _fail(message: str) -> NoReturn:
    print(f"magistral-runtime: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def check_environment(config: RuntimeConfig, *, env: Mapping[str, str]) -> None:
    """What the config needs from the environment; raises RuntimeConfigError."""
    if config.api_key_required and not env.get(API_KEY_ENV):
        raise RuntimeConfigError(
            f"api_key_required: the config requires an API key but {API_KEY_ENV} is not set"
        )
    problems = guarded_env_problems(env)
    if problems:
        raise RuntimeConfigError("; ".join(problems))


def prepare_system_prompt(config: RuntimeConfig, *, env: Mapping[str, str]) -> None:
    """Fetch the hub model's SYSTEM_PROMPT.txt, then check the prompt can be read."""
    try:
        fetch_model_prompt(config)
        load_system_prompt(config, env=env)
    except SystemPromptError as exc:
        raise RuntimeConfigError(
            f"system_prompt (mode {config.system_prompt.mode}): {exc}"
        ) from exc


def serve(
    *,
    config_path: Path,
    env: Mapping[str, str],
    execvp: Exec,
    dry_run: bool = False,
    fetch_prompt: bool = True,
) -> int:
    """Validate, then exec vLLM (or print its argv with dry_run)."""
    try:
        config = load_runtime_config(config_path)
        check_environment(config, env=env)
        if fetch_prompt:
            prepare_system_prompt(config, env=env)
    except RuntimeConfigError as exc:
        _fail(str(exc))
    argv = build_serve_argv(config)
    if dry_run:
        print(shlex.join(argv))
        return 0
    # The middleware, loaded inside the exec'd vLLM, reads the config from $CONFIG_ENV (or
    # the default path): point it at the file this command validated.
    os.environ[CONFIG_ENV] = str(config_path.resolve())
    sys.stdout.flush()
    sys.stderr.flush()
    execvp(argv[0], argv)
    return 0  # only reached when exec is replaced (tests)


def front(args: argparse.Namespace) -> int:
    """`magistral-runtime front`: check the flags, then run until SIGTERM."""
    try:
        config = front_config_from_args(args)
    except FrontConfigError as exc:
        _fail(str(exc))
    from .front.app import run  # aiohttp: only the front needs it

    return run(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magistral-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="validate the config and exec vllm serve")
    serve_parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"runtime config file (default: ${CONFIG_ENV}, else {CONFIG_PATH})",
    )
    serve_parser.add_argument(
        "--dry-run", action="store_true", help="print the vllm command line instead of running it"
    )
    serve_parser.add_argument(
        "--no-fetch-prompt",
        action="store_true",
        help="do not download the model's SYSTEM_PROMPT.txt nor check the prompt file",
    )
    front_parser = commands.add_parser(
        "front",
        help="the router front: hold at zero replicas, per-replica admission, demand report",
        description="Runs in front of vllm-router in each router pod (docs/router-front.md).",
    )
    add_front_arguments(front_parser)
    args = parser.parse_args(argv)
    if args.command == "front":
        return front(args)
    config_path = args.config or Path(os.environ.get(CONFIG_ENV) or CONFIG_PATH)
    return serve(
        config_path=config_path,
        env=os.environ,
        execvp=os.execvp,
        dry_run=args.dry_run,
        fetch_prompt=not args.no_fetch_prompt,
    )


if __name__ == "__main__":
    raise SystemExit(main())
