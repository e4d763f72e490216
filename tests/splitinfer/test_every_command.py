"""Every command of the command line, walked from the command tree itself so a new command or option
joins the sweep by existing: its --help works, and each of its arguments and options given a bad
value (a path that does not exist, a negative or non-finite number, a name nobody registered) is
refused with exit code 2 and one line naming the value, before any work, never a traceback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import typer
from bundles import build_bundle, tiny_model
from cli_runs import assert_ok, assert_user_error, cli

from splitinfer.app import app


def _leaves(command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, object]]:
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield " ".join(path), command


COMMANDS = dict(_leaves(typer.main.get_command(app)))

# Valid arguments for each command, from the files `files` makes: the bad value under test is then
# the only thing wrong. Cheap on purpose: if a bad value slipped through, the work it started would
# be a tiny model's.
BASE: dict[str, list[str]] = {
    "models": [],
    "metrics": [],
    "policies": [],
    "profile": ["{tiny}", "--repeats", "1", "--warmup", "0", "--out", "{tmp}/p.json"],
    "plan": ["{profile}"],
    "export": ["{tiny}", "--cut", "Relu_1", "--codec", "fp32", "--out", "{tmp}/bundle"],
    "serve": ["{bundle}", "--port", "0"],
    "run": ["{bundle}", "--server", "127.0.0.1:1", "--input", "{input}", "--attempts", "1"],
    "demo": ["--model", "resnet_tiny", "--repeats", "1", "--out", "{tmp}/demo"],
    "export-adaptive": ["{tiny}", "--profile", "{profile}", "--out", "{tmp}/adaptive"],
    "calibrate": ["--only", "conv", "--rounds", "1", "--repeats", "1", "--out", "{tmp}/device.json"],
    "certs": ["{tmp}/certs"],
    "signing-key": ["{tmp}/keys"],
    "sign": ["{bundle}", "--key", "{key}"],
    "experiment": ["{config}", "--out", "{tmp}/experiment"],
    "experiment-plot": ["{tmp}/results"],
    "netemu selftest": ["--seconds", "0.5", "--pings", "1", "--rates", "5"],
    "netemu link": ["127.0.0.1:1", "--seconds", "1"],
    "netemu trace": ["{trace}"],
    "netemu splice": ["{trace}@0+1", "--out", "{tmp}/spliced.up"],
}
# Paths written, not read: a bad one is a file where a directory must be (or a missing parent).
# export --encrypt-head reads its key file when there is one and writes a new one where there is not.
OUTPUT_FILES = {("profile", "out"), ("calibrate", "out"), ("netemu splice", "out"), ("export", "encrypt_head")}
OUTPUT_DIRS = {
    ("export", "out"),
    ("export-adaptive", "out"),
    ("demo", "out"),
    ("experiment", "out"),
    ("certs", "out_dir"),
    ("signing-key", "out_dir"),
    ("run", "update_cache"),
}
# Free text, where no value is wrong: names, a token, a host list.
FREE_TEXT = {
    ("calibrate", "name"),
    ("calibrate", "power_source"),
    ("certs", "client_id"),
    ("certs", "hosts"),
    ("signing-key", "name"),
    ("run", "token"),
}
# Options consulted only together with another: the sweep gives that one too.
COMPANIONS = {
    ("serve", "metrics_host"): ["--metrics-port", "0"],
    ("serve", "tls_cert"): ["--tls-key", "{certs}/server.key"],
    ("serve", "tls_key"): ["--tls-cert", "{certs}/server.pem"],
    ("serve", "tls_client_ca"): ["--tls-cert", "{certs}/server.pem", "--tls-key", "{certs}/server.key"],
    ("run", "tls_cert"): ["--tls-ca", "{certs}/ca.pem", "--tls-key", "{certs}/client.key"],
    ("run", "tls_key"): ["--tls-ca", "{certs}/ca.pem", "--tls-cert", "{certs}/client.pem"],
}


def _bad_values(command: str, param) -> list[str]:
    key, kind = (command, param.name), param.bare_type()
    if key in FREE_TEXT:
        return []
    if kind == "int":
        return ["-1"]
    if kind == "float":
        return ["-1", "nan"]
    if kind == "Path":
        if key in OUTPUT_DIRS:
            return ["{tmp}/notes.txt/sub"]
        if key in OUTPUT_FILES:
            return ["{tmp}/nowhere/out.json"]
        return [f"{{tmp}}/missing-{param.name.replace('_', '-')}"]
    return ["nosuch"]


def _cases() -> Iterator[pytest.param]:
    for command, click_command in COMMANDS.items():
        for param in click_command.params:
            if getattr(param, "is_flag", False):
                continue
            for bad in _bad_values(command, param):
                yield pytest.param(command, param, bad, id=f"{command}-{param.name}={bad.split('/')[-1]}")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sweep")
    tiny = root / "tiny.onnx"
    onnx.save(tiny_model(), tiny)
    assert_ok(cli("profile", tiny, "--repeats", "1", "--warmup", "0", "--out", root / "profile.json"))
    keys = root / "keys"
    assert_ok(cli("signing-key", keys))
    assert_ok(cli("certs", root / "certs"))
    (root / "input.npy").write_bytes(b"")
    trace = root / "trace.csv"
    trace.write_text("0,5\n1,5\n2,5\n")
    config = root / "experiment.toml"
    config.write_text('models = ["resnet_tiny"]\npolicies = ["neurosurgeon"]\n')
    return {
        "tiny": str(tiny),
        "profile": str(root / "profile.json"),
        "bundle": str(build_bundle(root / "bundle").path),
        "input": str(root / "input.npy"),
        "key": str(keys / "bundle-signing.key"),
        "trace": str(trace),
        "config": str(config),
        "certs": str(root / "certs"),
    }


def _args(template: list[str], files: dict[str, str], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **files) for a in template]


def test_every_command_is_swept() -> None:
    assert set(COMMANDS) == set(BASE), "give a new command its valid arguments in BASE"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command: str) -> None:
    """--help (and -h) work for every command, and fit 80 columns with no option name cut short."""
    for flag in ("--help", "-h"):
        stdout = assert_ok(cli(*command.split(), flag, env={"COLUMNS": "80"}))
        assert "Usage:" in stdout
        assert all(len(line) <= 80 for line in stdout.splitlines())
        assert not re.search(r"--[a-z-]+…", stdout), stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "param", "bad"), list(_cases()))
def test_a_bad_value_is_refused_in_one_line(command: str, param, bad: str, files: dict[str, str], tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    args = _args(BASE[command], files, tmp_path)
    bad = bad.format(tmp=tmp_path)
    if param.param_type_name == "argument":
        args[0] = bad
    else:
        flag = param.opts[0]
        if flag in args:
            args[args.index(flag) + 1] = bad
        else:
            args += [flag, bad]
        args += _args(COMPANIONS.get((command, param.name), []), files, tmp_path)
    line = assert_user_error(cli(*command.split(), *args), bad)
    # It speaks in flags: no parameter's Python name (edge_threads for --edge-threads).
    names = {p.name for p in COMMANDS[command].params if "_" in p.name}
    assert not [n for n in names if re.search(rf"\b{n}\b", line)], line
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["notes.txt"], f"{made} written before refusing"


def test_the_top_level_help_groups_every_command_in_panels() -> None:
    from splitinfer.app import PANELS

    stdout = assert_ok(cli("--help", env={"COLUMNS": "80"}))
    titles = re.findall(r"^╭─ (\w+) ─", stdout, re.MULTILINE)
    assert titles == ["Options", *PANELS]
    listed = re.findall(r"^│ ([a-z][a-z-]+) ", stdout, re.MULTILINE)
    assert listed == [name for names in PANELS.values() for name in names]
    assert {name.split()[0] for name in COMMANDS} == set(listed)


# Bad files and folders the walk above does not make, each with what the line must name.
SPECIAL_CASES = [
    (["run", "{bundle}", "--server", "127.0.0.1:1", "--input", "{tmp}/random.npy"], "is not a .npy file"),
    (["run", "{bundle}", "--server", "127.0.0.1:1", "--input", "{tmp}/objects.npy"], "is not an array of numbers"),
    (["netemu", "trace", "{tmp}"], "is a directory"),
    (["export", "{tiny}", "--cut", "Relu_1", "--codec", "fp32", "--out", "{bundle}"], "holds a bundle already"),
    (["export-adaptive", "{tiny}", "--profile", "{profile}", "--out", "{bundle}"], "--force"),
    (["experiment", "{tmp}/unknown-model.toml"], "model 'nosuch' is neither a known model"),
    (["demo", "--model", "{tiny}"], "is not a registered model"),
    (["plan", "{profile}", "--min-agreement", "2"], "--min-agreement '2'"),
    (["plan", "{profile}", "--bandwidth", "1e400mbit"], "1e400mbit"),
]


@pytest.mark.parametrize(
    ("args", "fragment"), SPECIAL_CASES, ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None
)
def test_a_bad_file_is_refused_in_one_line(
    args: list[str], fragment: str, files: dict[str, str], tmp_path: Path
) -> None:
    import numpy as np

    (tmp_path / "random.npy").write_bytes(bytes(range(256)) * 4)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "unknown-model.toml").write_text(
        'models = ["nosuch"]\npolicies = ["neurosurgeon"]\nout = "results"\n'
        '[[conditions]]\nname = "4g"\npreset = "4g"\n'
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(cli(*_args(args, files, tmp_path)), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_usage_error_is_one_line_too() -> None:
    """What click refuses while parsing ends as the project's own refusals do."""
    assert_user_error(cli("plan"), "Missing argument 'PROFILE'")
    assert_user_error(cli("plab"), "No such command 'plab'")
    assert_user_error(cli("plan", "p.json", "--bandwidht", "3"), "--bandwidht")
    assert_user_error(cli("profile", "x", "--repeats", "lots"), "'--repeats'")
