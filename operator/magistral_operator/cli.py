"""`magistral-operator`: run the operator, or render an endpoint's manifests without a cluster."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .api.config import OperatorConfig, load_operator_config
from .api.endpoint import parse_endpoint
from .api.errors import ConfigError
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
    from .kube.client import Kube, load_api_client

    config = _load_config(args.config)
    namespaces = args.namespace or []
    if args.metrics_port:
        from .handlers.metrics import serve_metrics

        serve_metrics(args.metrics_port)
    memo = kopf.Memo(config=config, kube=Kube(load_api_client()), namespaces=namespaces)
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness,
        memo=memo,
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate an operator config file."""
    config = _load_config(args.config)
    print(f"ok: {len(config.pools)} pools: {', '.join(p.name for p in config.pools)}")
    return 0


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
        "--peering", help="kopf peering name for several replicas; standalone when omitted"
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
