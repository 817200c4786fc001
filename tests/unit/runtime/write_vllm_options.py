"""Write operator/magistral_operator/api/vllm_options.json from the pinned vLLM release.

    python -m tests.unit.runtime.write_vllm_options          # rewrite the file
    python -m tests.unit.runtime.write_vllm_options --check  # exit 1 when it is stale

The operator cannot import vLLM, so it splits `spec.runtime.extraArgs` with this table of
`vllm serve`'s argparse actions (read from the release's sdist by vllm_cli.py).
`tests/unit/test_vllm_args.py` regenerates it and fails when it differs, so a vLLM bump that
adds, renames or reshapes an option fails loudly until the file is rewritten.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from magistral_runtime import VLLM_VERSION

from .vllm_cli import Option, VllmSource, serve_options, vllm_source

TARGET = (
    Path(__file__).resolve().parents[3]
    / "operator"
    / "magistral_operator"
    / "api"
    / "vllm_options.json"
)
# argparse's own -h/--help (add_help=True on the serve subparser): it prints and exits.
HELP = Option("help", ("-h", "--help"), "switch", "argparse add_help")


def options_document(source: VllmSource) -> dict[str, Any]:
    options = [*serve_options(source), HELP]
    return {
        "vllm": VLLM_VERSION,
        "generator": "python -m tests.unit.runtime.write_vllm_options",
        "options": [
            # strings in argparse's order: the first long one names the option
            {"dest": o.dest, "strings": list(o.strings), "nargs": o.nargs, "origin": o.origin}
            for o in sorted(options, key=lambda o: (o.dest, o.strings))
        ],
    }


def render(document: dict[str, Any]) -> str:
    """JSON with one option per line (small diffs on a vLLM bump)."""
    head = {k: v for k, v in document.items() if k != "options"}
    lines = [json.dumps(o, sort_keys=True) for o in document["options"]]
    body = ",\n  ".join(lines)
    return json.dumps(head, sort_keys=True)[:-1] + ',\n "options": [\n  ' + body + "\n ]\n}\n"


def main(argv: list[str]) -> int:
    text = render(options_document(VllmSource(vllm_source(VLLM_VERSION))))
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run python -m tests.unit.runtime.write_vllm_options")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
