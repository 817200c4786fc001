"""Build the local cluster's binaries from pinned upstream Go modules into a cache.

Run ``python -m e2e.cluster.binaries`` from the repository root, or call
:func:`ensure_binaries`. Binaries land in ``<cache>/bin/<component>-<version>/`` where
``<cache>`` is ``$MAGISTRAL_E2E_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/magistral-operator``.
A warm cache (binaries present, stamp matches, ``--version`` tells the pinned version) is
checked in under a second; a cold build of everything takes about ten minutes on two
cores (see docs/cluster-harness.md).

Every component is built from a small wrapper module generated in
``<cache>/build/<component>-<version>/`` that requires the upstream module. Upstream's
``replace`` directives that point at local paths cannot work outside its repository:
for ``k8s.io/kubernetes`` they are rewritten to the published staging modules
(``k8s.io/api => k8s.io/api v0.<minor>.<patch>`` etc.), for others they are dropped.
Go's own module and build caches (GOMODCACHE, GOCACHE) are used as configured.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.versions import COMPONENTS, OPTIONAL_COMPONENTS, Component

MIN_FREE_GIB = 10
"""Free disk (GiB) required on the cache and Go cache file systems before a cold build."""
HEARTBEAT_SECONDS = 30.0
STAMP = ".build.json"

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A component failed to build; the message names the module and version."""

    def __init__(self, component: Component, reason: str, output_tail: Sequence[str] = ()) -> None:
        self.component = component
        self.output_tail = list(output_tail)
        tail = "\n".join(f"    {line}" for line in self.output_tail)
        super().__init__(
            f"building {component.name} ({component.module}@{component.version}) failed: {reason}"
            + (f"\n  last lines of go's output:\n{tail}" if tail else "")
        )


def cache_dir() -> Path:
    """``$MAGISTRAL_E2E_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/magistral-operator``."""
    explicit = os.environ.get("MAGISTRAL_E2E_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(xdg).expanduser() / "magistral-operator").resolve()


def bin_dir(component: Component) -> Path:
    return cache_dir() / "bin" / component.key


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def go_env() -> dict[str, str]:
    """Environment for every ``go`` call: static, trimmed, module mode, no workspace."""
    env = dict(os.environ)
    flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join([*flags, "-mod=mod"])
    env["CGO_ENABLED"] = "0"
    env["GOWORK"] = "off"
    return env


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            "the `go` command is not on PATH; install Go >= 1.26 to build the e2e binaries"
        )
    return go


def _go_output(args: Sequence[str], *, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [_go(), *args], cwd=cwd, env=go_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`go {' '.join(args)}` failed:\n{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def go_mod_download(module: str, version: str) -> dict[str, str]:
    """``go mod download -json module@version``: returns its JSON (keys Dir, GoMod, ...)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [_go(), "mod", "download", "-json", f"{module}@{version}"],
        cwd=cache_dir(),
        env=go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    # go prints the JSON, with an Error field on failure, on stdout either way.
    try:
        info: dict[str, str] = json.loads(proc.stdout)
    except ValueError:
        info = {}
    error = info.get("Error") or (proc.stderr.strip() if proc.returncode != 0 else "")
    if error or not info:
        raise RuntimeError(f"cannot download {module}@{version}: {error or 'no output from go'}")
    return info


def go_module_dir(module: str, version: str) -> Path:
    """The unpacked source of ``module@version`` in Go's module cache (downloaded if needed)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    return Path(go_mod_download(module, version)["Dir"])


@dataclass(frozen=True)
class Replace:
    old: str
    old_version: str | None
    new: str
    new_version: str | None

    @property
    def is_local(self) -> bool:
        return self.new.startswith(("./", "../", "/")) or self.new in (".", "..")


_COMMENT = re.compile(r"//.*$")


def parse_go_mod(text: str) -> tuple[str | None, list[Replace]]:
    """Return the ``go`` directive and the ``replace`` directives of a go.mod file."""
    go_version: str | None = None
    replaces: list[Replace] = []
    in_block = False
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        if in_block:
            if line == ")":
                in_block = False
                continue
            replaces.append(_parse_replace(line))
            continue
        if line.startswith("go "):
            go_version = line.split()[1]
        elif line in ("replace (", "replace("):
            in_block = True
        elif line.startswith("replace "):
            replaces.append(_parse_replace(line[len("replace ") :]))
    return go_version, replaces


def _parse_replace(spec: str) -> Replace:
    left, _, right = spec.partition("=>")
    lhs, rhs = left.split(), right.split()
    if not lhs or not rhs:
        raise ValueError(f"cannot parse replace directive {spec!r}")
    return Replace(
        old=lhs[0],
        old_version=lhs[1] if len(lhs) > 1 else None,
        new=rhs[0],
        new_version=rhs[1] if len(rhs) > 1 else None,
    )


def wrapper_go_mod(component: Component, upstream_go_mod: str) -> str:
    """The go.mod of the wrapper module that builds ``component``."""
    go_version, replaces = parse_go_mod(upstream_go_mod)
    lines = [
        f"module magistral-e2e/build/{component.name}",
        "",
        f"go {go_version or '1.26'}",
        "",
        f"require {component.module} {component.version}",
        "",
    ]
    kept: list[str] = []
    for rep in replaces:
        if rep.old == component.module:
            continue
        if rep.is_local:
            if component.staging_version is None:
                continue  # e.g. etcd's ../api: the published module at the required version is used
            kept.append(f"\t{rep.old} => {rep.old} {component.staging_version}")
        else:
            old = f"{rep.old} {rep.old_version}" if rep.old_version else rep.old
            new = f"{rep.new} {rep.new_version}" if rep.new_version else rep.new
            kept.append(f"\t{old} => {new}")
    if kept:
        lines += ["replace (", *kept, ")", ""]
    return "\n".join(lines)


def _ldflags(component: Component) -> str:
    return " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in sorted(component.ldflags_x.items()))])


def _fingerprint(component: Component) -> str:
    payload = json.dumps(
        {
            "module": component.module,
            "version": component.version,
            "binaries": component.binaries,
            "ldflags": _ldflags(component),
            "staging": component.staging_version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _version_ok(component: Component, binary: Path) -> tuple[bool, str]:
    args = component.version_args.get(binary.name, ("--version",))
    try:
        proc = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    output = (proc.stdout + proc.stderr).strip()
    return component.version_text in output, output.splitlines()[0] if output else ""


def is_built(component: Component) -> bool:
    """True if the cached binaries exist, match the stamp and report the pinned version."""
    target = bin_dir(component)
    try:
        stamp = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("fingerprint") != _fingerprint(component):
        return False
    for name in component.binaries:
        path = target / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            return False
        ok, _ = _version_ok(component, path)
        if not ok:
            return False
    return True


def check_free_disk(paths: Iterable[Path], *, min_gib: float = MIN_FREE_GIB) -> None:
    """Fail early, with a clear message, if a file system we build onto is nearly full."""
    for path in paths:
        probe = path
        while not probe.exists():
            probe = probe.parent
        free_gib = shutil.disk_usage(probe).free / 2**30
        if free_gib < min_gib:
            raise RuntimeError(
                f"only {free_gib:.1f} GiB free under {probe}; "
                f"a cold build needs about {min_gib} GiB "
                "(Go's build cache for Kubernetes alone is several GiB)"
            )


def _go_cache_dirs() -> list[Path]:
    out = _go_output(["env", "GOCACHE", "GOMODCACHE"]).split()
    return [Path(p) for p in out]


def _run_go_build(
    component: Component, args: list[str], *, cwd: Path, verbose: bool, log: Log
) -> None:
    """Run ``go build``; stream or summarise its output; raise BuildError on failure."""
    tail: deque[str] = deque(maxlen=40)
    counts = {"packages": 0, "downloads": 0}
    last = [""]
    proc = subprocess.Popen(
        [_go(), *args],
        cwd=cwd,
        env=go_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if line.startswith("go: downloading"):
                counts["downloads"] += 1
            elif line and not line.startswith(("go:", "#", " ", "\t")):
                counts["packages"] += 1
                last[0] = line
            if verbose:
                log(f"  {line}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    start = time.monotonic()
    while True:
        try:
            proc.wait(timeout=HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if not verbose:
                elapsed = int(time.monotonic() - start)
                log(
                    f"  [{component.name}] {elapsed // 60}m{elapsed % 60:02d}s: "
                    f"{counts['downloads']} modules downloaded, {counts['packages']} packages built"
                    + (f", last {last[0]}" if last[0] else "")
                )
    thread.join(timeout=10)
    if proc.returncode != 0:
        raise BuildError(component, f"`go {' '.join(args[:2])} …` exited {proc.returncode}", tail)


def build(component: Component, *, verbose: bool = False, log: Log = _log) -> float:
    """Build ``component`` into its cache directory; returns the wall-clock seconds taken."""
    start = time.monotonic()
    root = cache_dir()
    work = root / "build" / component.key
    work.mkdir(parents=True, exist_ok=True)
    log(f"==> {component.name} {component.version}: resolving {component.module}")
    try:
        info = go_mod_download(component.module, component.version)
        upstream = Path(info["GoMod"]).read_text()
    except (RuntimeError, OSError, KeyError) as err:
        raise BuildError(component, str(err)) from err
    (work / "go.mod").write_text(wrapper_go_mod(component, upstream))
    (work / "go.sum").unlink(missing_ok=True)

    final = bin_dir(component)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    packages = list(component.binaries.values())
    if len(packages) == 1:
        output = str(staging / next(iter(component.binaries)))
    else:
        output = str(staging) + os.sep  # one build, shared compiled packages
    args = ["build", "-v", "-trimpath", "-ldflags", _ldflags(component), "-o", output, *packages]
    log(f"==> {component.name} {component.version}: go build {' '.join(component.binaries)}")
    _run_go_build(component, args, cwd=work, verbose=verbose, log=log)

    for name in component.binaries:
        path = staging / name
        if not path.is_file():
            raise BuildError(component, f"go build succeeded but produced no {name} in {staging}")
        ok, line = _version_ok(component, path)
        if not ok:
            raise BuildError(
                component,
                f"{name} reports {line!r}, expected it to contain {component.version_text!r}",
            )
    seconds = time.monotonic() - start
    stamp = {
        "fingerprint": _fingerprint(component),
        "module": component.module,
        "version": component.version,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "go": _go_output(["env", "GOVERSION"]).strip(),
    }
    (staging / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    _record_time(component, seconds)
    log(f"==> {component.name} {component.version}: built in {_fmt(seconds)}")
    return seconds


def _record_time(component: Component, seconds: float) -> None:
    path = cache_dir() / "build-times.json"
    try:
        records: list[dict[str, object]] = json.loads(path.read_text())
    except (OSError, ValueError):
        records = []
    records.append(
        {
            "component": component.name,
            "version": component.version,
            "seconds": round(seconds, 1),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    path.write_text(json.dumps(records, indent=2) + "\n")


def _fmt(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def ensure_binaries(
    components: Sequence[Component] = COMPONENTS,
    *,
    verbose: bool = False,
    log: Log = _log,
    strict: bool = False,
) -> dict[str, Path]:
    """Make sure every component is built; return binary name -> path.

    Raises :class:`BuildError` for a required component that fails; an optional one
    (``Component.optional``) is reported and left out of the result unless ``strict``.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    if all(is_built(c) for c in components):
        return {name: bin_dir(c) / name for c in components for name in c.binaries}
    with _build_lock(root, log):
        return _ensure_locked(components, verbose=verbose, log=log, strict=strict)


@contextmanager
def _build_lock(root: Path, log: Log) -> Iterator[None]:
    """One builder at a time per cache (parallel test workers wait for the first)."""
    with (root / "build.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build in {root} to finish ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_locked(
    components: Sequence[Component], *, verbose: bool, log: Log, strict: bool
) -> dict[str, Path]:
    root = cache_dir()
    result: dict[str, Path] = {}
    missing = [c for c in components if not is_built(c)]
    if missing:
        check_free_disk([root, *_go_cache_dirs()])
    for component in components:
        if component in missing:
            try:
                build(component, verbose=verbose, log=log)
            except BuildError as err:
                if strict or not component.optional:
                    raise
                log(f"warning: optional component skipped: {err}")
                continue
        for name in component.binaries:
            result[name] = bin_dir(component) / name
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster.binaries", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "components",
        nargs="*",
        help=f"components to build (default: {', '.join(c.name for c in COMPONENTS)}; "
        f"optional: {', '.join(c.name for c in OPTIONAL_COMPONENTS)})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="stream go's -v output")
    parser.add_argument(
        "--print-dir", action="store_true", help="print the cache directory and exit"
    )
    args = parser.parse_args(argv)
    if args.print_dir:
        print(cache_dir())
        return 0
    by_name = {c.name: c for c in (*COMPONENTS, *OPTIONAL_COMPONENTS)}
    unknown = [n for n in args.components if n not in by_name]
    if unknown:
        parser.error(f"unknown component(s): {', '.join(unknown)}")
    selected = [by_name[n] for n in args.components] if args.components else list(COMPONENTS)
    start = time.monotonic()
    try:
        # Components named on the command line are required, optional or not.
        paths = ensure_binaries(selected, verbose=args.verbose, strict=bool(args.components))
    except (BuildError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, path in sorted(paths.items()):
        print(f"{name}\t{path}")
    _log(f"binaries ready in {_fmt(time.monotonic() - start)} (cache: {cache_dir()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
