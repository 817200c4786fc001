"""The front's flags (`magistral-runtime front --…`) and the frozen config they make."""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class FrontConfigError(ValueError):
    """A flag's value is invalid; the message names the flag."""


@dataclass(frozen=True, slots=True)
class FrontConfig:
    """Everything the front needs; the defaults are the router pod's."""

    host: str = "0.0.0.0"
    port: int = 8000
    demand_port: int = 9090
    router_url: str = "http://127.0.0.1:8001"
    max_num_seqs: int = 256
    router_replicas: int = 2
    hold_timeout_seconds: float = 300.0
    retry_after_seconds: int = 30
    max_body_bytes: int = 32 * MIB
    drain_seconds: float = 30.0
    poll_interval_seconds: float = 0.5
    log_level: str = "info"


DEFAULTS = FrontConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The front's flags, as strings: ``config_from_args`` checks them and names the flag."""
    add = parser.add_argument
    add("--host", default=DEFAULTS.host, help="address to listen on (default: %(default)s)")
    add("--port", default=str(DEFAULTS.port), help="the proxy's port (default: %(default)s)")
    add(
        "--demand-port",
        default=str(DEFAULTS.demand_port),
        help="/demand, /metrics and /healthz (default: %(default)s)",
    )
    add(
        "--router-url",
        default=DEFAULTS.router_url,
        help="vllm-router's base URL, http://host:port (default: %(default)s)",
    )
    add(
        "--max-num-seqs",
        default=str(DEFAULTS.max_num_seqs),
        help="requests one engine replica runs at once (default: %(default)s)",
    )
    add(
        "--router-replicas",
        default=str(DEFAULTS.router_replicas),
        help="router pods sharing the engines (default: %(default)s)",
    )
    add(
        "--hold-timeout-seconds",
        default=str(DEFAULTS.hold_timeout_seconds),
        help="longest wait for a replica or a slot before 503 (default: %(default)s)",
    )
    add(
        "--retry-after-seconds",
        default=str(DEFAULTS.retry_after_seconds),
        help="the Retry-After of that 503 (default: %(default)s)",
    )
    add(
        "--max-body-bytes",
        default=str(DEFAULTS.max_body_bytes),
        help="larger request bodies get 413 (default: %(default)s)",
    )
    add(
        "--drain-seconds",
        default=str(DEFAULTS.drain_seconds),
        help="after SIGTERM, how long requests may finish (default: %(default)s)",
    )
    add(
        "--poll-interval-seconds",
        default=str(DEFAULTS.poll_interval_seconds),
        help="how often the router's workers are read (default: %(default)s)",
    )
    add(
        "--log-level",
        default=DEFAULTS.log_level,
        help=f"one of {', '.join(LOG_LEVELS)} (default: %(default)s)",
    )


def _int(flag: str, text: str, *, low: int, high: int | None = None) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise FrontConfigError(f"{flag}: expected an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise FrontConfigError(f"{flag}: must be {bound}, got {value}")
    return value


def _seconds(flag: str, text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FrontConfigError(f"{flag}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise FrontConfigError(f"{flag}: must be {kind} finite number, got {text!r}")
    return value


def _host(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise FrontConfigError(f"--host: expected an IP address, got {text!r}") from None
    return text


def _router_url(text: str) -> str:
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme != "http"
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise FrontConfigError(
            f"--router-url: expected http://host:port with no path, got {text!r}"
        )
    return f"http://{parts.netloc}"


def config_from_args(args: argparse.Namespace) -> FrontConfig:
    """Check every flag; raises FrontConfigError naming the first bad one."""
    port = _int("--port", args.port, low=1, high=65535)
    demand_port = _int("--demand-port", args.demand_port, low=1, high=65535)
    if demand_port == port:
        raise FrontConfigError(f"--demand-port: must differ from --port ({port})")
    log_level = args.log_level.lower()
    if log_level not in LOG_LEVELS:
        raise FrontConfigError(
            f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}"
        )
    return FrontConfig(
        host=_host(args.host),
        port=port,
        demand_port=demand_port,
        router_url=_router_url(args.router_url),
        max_num_seqs=_int("--max-num-seqs", args.max_num_seqs, low=1),
        router_replicas=_int("--router-replicas", args.router_replicas, low=1),
        hold_timeout_seconds=_seconds(
            "--hold-timeout-seconds", args.hold_timeout_seconds, positive=True
        ),
        retry_after_seconds=_int("--retry-after-seconds", args.retry_after_seconds, low=0),
        max_body_bytes=_int("--max-body-bytes", args.max_body_bytes, low=1),
        drain_seconds=_seconds("--drain-seconds", args.drain_seconds, positive=False),
        poll_interval_seconds=_seconds(
            "--poll-interval-seconds", args.poll_interval_seconds, positive=True
        ),
        log_level=log_level,
    )


def parse_front_args(argv: Sequence[str]) -> FrontConfig:
    """``argv`` (the flags after ``front``) to a config; for tests and tools."""
    parser = argparse.ArgumentParser(prog="magistral-runtime front")
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))
