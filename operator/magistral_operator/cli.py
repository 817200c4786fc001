"""`magistral-operator`: run the operator, or render an endpoint's manifests without a cluster."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .api.config import OperatorConfig, load_operator_config
from .api.endpoint import parse_endpoint
from .api.errors import ConfigError
from .api.values_schema import LOG_FORMATS, LOG_LEVELS
from .render import render_endpoint

DEFAULT_CONFIG = "/etc/magistral-operator/config.yaml"
CONFIG_ENV = "MAGISTRAL_OPERATOR_CONFIG"


class _BlockDumper(yaml.SafeDumper):
    """YAML with multi-line strings as literal blocks (readable runtime configs in review)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def dump_manifests(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML of `objects`."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, width=120)


def _config_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _load_config(arg: str | None) -> OperatorConfig:
    path = _config_path(arg)
    if arg is None and CONFIG_ENV not in os.environ and not path.exists():
        example = Path(__file__).resolve().parents[2] / "examples" / "operator-config.yaml"
        if example.exists():
            path = example
    return load_operator_config(path)


def cmd_render(args: argparse.Namespace) -> int:
    """Print the manifests the operator would apply for each endpoint in the file."""
    config = _load_config(args.config)
    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    documents = [d for d in yaml.safe_load_all(text) if d]
    if not documents:
        raise ConfigError(f"{args.filename}: no MagistralEndpoint found")
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for doc in documents:
        endpoint = parse_endpoint(doc)
        rendered = render_endpoint(endpoint, config)
        if not rendered.plan.ok:
            raise ConfigError(
                f"{endpoint.namespace}/{endpoint.name}: " + "; ".join(rendered.plan.problems)
            )
        out.extend(rendered.objects)
        for p in rendered.plan.pools:
            notes.append(f"# {endpoint.name} on pool {p.pool.name}: {p.sizing.message}")
        if rendered.budget:
            notes.append(f"# startup budget: {rendered.budget.explanation}")
    print("\n".join(notes))
    print(dump_manifests(out), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the operator (blocks until stopped)."""
    import kopf

    from .handlers import operator as _registrations  # noqa: F401  (registers handlers)
    from .kube.cached import Cache, CachedKube
    from .kube.client import Kube, load_api_client

    # kopf.run() leaves logging as it finds it: without this, Python's last-resort handler
    # printed warnings only, with no time, and a pass's "applied ..." line went nowhere.
    kopf.configure(
        debug=args.log_level == "debug",
        quiet=args.log_level == "warning",
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
        log_prefix=None,  # kopf's lines name their object: "[namespace/name] ..." in text
    )
    config = _load_config(args.config)
    namespaces = args.namespace or []
    identity = args.leader_elect_identity or default_identity()
    api_client = load_api_client()
    # Each process names itself to the API server (its audit log records the User-Agent).
    api_client.user_agent = f"magistral-operator/{identity}"
    leadership = None
    may_write = None
    write_timeout = None
    if args.leader_elect:
        from .kube.lease import LeaseElector
        from .leadership import LeaseTiming

        try:
            timing = LeaseTiming(
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        namespace = args.leader_elect_namespace or default_namespace()
        leadership = LeaseElector(
            Kube(api_client, write_timeout=timing.retry_period),
            namespace=namespace,
            name=args.leader_elect_lease_name,
            identity=identity,
            timing=timing,
        )
        may_write = leadership.is_leader
        write_timeout = timing.fencing_margin
        print(
            f"leader election: Lease {namespace}/{args.leader_elect_lease_name} as {identity}; "
            f"lease {timing.lease_duration:g}s, renew deadline {timing.renew_deadline:g}s, "
            f"retry {timing.retry_period:g}s",
            file=sys.stderr,
        )
        leadership.start()
    if args.metrics_port:
        from .handlers.metrics import serve_metrics

        serve_metrics(args.metrics_port)
    # Reads come from watch-fed caches (kube/cached.py), filled by their own reader.
    cache = Cache(Kube(api_client), namespaces=namespaces)
    kube = CachedKube(
        Kube(api_client, may_write=may_write, write_timeout=write_timeout), cache=cache
    )
    memo = kopf.Memo(
        config=config, kube=kube, cache=cache, namespaces=namespaces, leadership=leadership
    )
    kopf.run(
        standalone=True,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness,
        memo=memo,
    )
    return 0


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_identity() -> str:
    """hostname_pid: unique per process, like client-go's examples (the chart sets POD_NAME)."""
    import socket

    return f"{socket.gethostname()}_{os.getpid()}"


def default_namespace() -> str:
    """The pod's namespace in a cluster; `default` out of one."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate an operator config file."""
    config = _load_config(args.config)
    print(f"ok: {len(config.pools)} pools: {', '.join(p.name for p in config.pools)}")
    return 0


def _seconds(*, env: str) -> Callable[[str], float]:
    """An argparse type for a positive number of seconds, from the flag or from `env`."""

    def check(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a positive number of seconds (from the flag or ${env})"
            )
        return seconds

    return check


def _one_of(choices: tuple[str, ...], *, env: str) -> Callable[[str], str]:
    """An argparse type that checks the value, from the flag or from `env` (argparse does not
    check a default against `choices`)."""

    def check(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not one of {', '.join(choices)} (from the flag or ${env})"
            )
        return value

    return check


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="magistral-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--config", help=f"operator config file (default ${CONFIG_ENV} or {DEFAULT_CONFIG})"
    )
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable); all when omitted",
    )
    run.add_argument(
        "--leader-elect",
        action="store_true",
        default=_env_flag("MAGISTRAL_LEADER_ELECT"),
        help="elect one active replica through a coordination.k8s.io Lease (docs/install.md)",
    )
    run.add_argument(
        "--leader-elect-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the Lease (default $POD_NAMESPACE, else the pod's own namespace)",
    )
    run.add_argument(
        "--leader-elect-lease-name",
        default=os.environ.get("MAGISTRAL_LEASE_NAME", "magistral-operator"),
        help="name of the Lease (default magistral-operator)",
    )
    run.add_argument(
        "--leader-elect-identity",
        default=os.environ.get("POD_NAME"),
        help="this replica's identity in the Lease (default $POD_NAME, else hostname_pid)",
    )
    for flag, env, default, what in (
        ("--lease-duration", "MAGISTRAL_LEASE_DURATION_SECONDS", 15.0, "how long a Lease holds"),
        ("--renew-deadline", "MAGISTRAL_RENEW_DEADLINE_SECONDS", 10.0, "the leader stops after"),
        ("--retry-period", "MAGISTRAL_RETRY_PERIOD_SECONDS", 2.0, "between Lease reads"),
    ):
        run.add_argument(
            flag,
            type=_seconds(env=env),
            default=os.environ.get(env, f"{default:g}"),  # a string: argparse checks it
            help=f"seconds: {what} (default ${env} or {default:g})",
        )
    for flag, env, choices, fallback, what in (
        ("--log-level", "MAGISTRAL_LOG_LEVEL", LOG_LEVELS, "info",
         "info logs each pass that writes, leadership and kopf's handlers"),
        ("--log-format", "MAGISTRAL_LOG_FORMAT", LOG_FORMATS, "text",
         "text lines with a timestamp, or one JSON object a line"),
    ):  # fmt: skip
        run.add_argument(
            flag,
            type=_one_of(choices, env=env),
            default=os.environ.get(env, fallback),
            help=f"{', '.join(choices)}: {what} (default ${env} or {fallback})",
        )
    run.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here")
    run.set_defaults(func=cmd_run)

    render = sub.add_parser("render", help="print the manifests for an endpoint, without a cluster")
    render.add_argument(
        "-f", "--filename", required=True, help="endpoint YAML file, or - for stdin"
    )
    render.add_argument("--config", help="operator config file (default: the example config)")
    render.set_defaults(func=cmd_render)

    check = sub.add_parser("check-config", help="validate an operator config file")
    check.add_argument("--config", help="operator config file")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one clear message and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
