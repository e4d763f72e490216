"""The device side in three runtimes (issue 19 item 6): the demo cut's head timed in onnxruntime-web
(WebAssembly, 1 thread, in headless Chromium), in onnxruntime-node (1 thread) and in Python
onnxruntime (1 intra-op thread), the same head.onnx on the same input; and the TypeScript SDK's
encode of the head's output under every codec of the contract (5 encodings × none/zstd), in Node
and in Chromium, beside Python's encoder (protos.codec) on the same tensor. Median and p90 over
--runs runs after --warmup runs (an encode run: --encode-batch encodes back to back, the time
divided among them, as a browser's clock ticks in 0.1 ms); every process pinned to one core (--cpu).

Exports EfficientNet-Lite0 at _blocks.7 (the cut of bench/web_demo.py and the demo page's test)
unless given a bundle; the input is the first scikit-image evaluation photo through the bundle's
preprocessing. Needs `make web` and /usr/bin/chromium.

    .venv/bin/python bench/web_heads.py [--bundle DIR] [--runs 30] [--warmup 5] [--encode-batch 20] [--cpu 1]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from protos.bundle import load_bundle
from protos.codec import Codec, encode
from splitinfer.app import app
from splitter.models import evaluation_photos

WEB = Path(__file__).resolve().parents[1] / "edge_runtime" / "web"
PAGES = WEB / "dist" / "browser-test"
CODECS = tuple(f"{e}{c}" for e in ("fp32", "fp16", "int8", "int8ch", "int4ch") for c in ("", "+zstd"))
CUT = "_blocks.7"


def stats(times_ms: list[float]) -> tuple[float, float]:
    """Median and p90 (nearest rank) of `times_ms`."""
    ordered = sorted(times_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(np.ceil(0.9 * len(ordered))) - 1)]


def cell(times_ms: list[float]) -> str:
    median, p90 = stats(times_ms)
    return f"{median:.3f} / {p90:.3f}"


def python_times(head: Path, x: np.ndarray, runs: int, warmup: int, batch: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(head), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    head_ms = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        (cut,) = session.run(None, feed)[:1]
        if i >= warmup:
            head_ms.append((time.perf_counter() - start) * 1e3)
    encode_ms, encoded_bytes = {}, {}
    for name in CODECS:
        codec = Codec.parse(name)
        encode_ms[name] = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            for _ in range(batch):
                tensor = encode("cut", cut, codec)
            if i >= warmup:
                encode_ms[name].append((time.perf_counter() - start) * 1e3 / batch)
        encoded_bytes[name] = len(tensor.data)
    return {"headMs": head_ms, "cut": cut, "encodeMs": encode_ms, "encodedBytes": encoded_bytes}


def node_times(job: Path, cpu: int) -> dict:
    run = subprocess.run(
        ["taskset", "-c", str(cpu), "node", str(PAGES / "heads-node.mjs"), str(job)],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise SystemExit(f"the Node side failed: {run.stderr[-3000:]}")
    return json.loads(run.stdout)


def browser_times(job: Path, cpu: int) -> dict:
    """heads.html served from `job` (the pages copied in beside the job's files) over loopback."""
    for page in PAGES.iterdir():
        shutil.copyfile(page, job / page.name)
    handler = functools.partial(QuietHandler, directory=str(job))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/heads.html"
        run = subprocess.run(
            ["taskset", "-c", str(cpu), "node", "drive-page.mjs", url, "600"],
            cwd=WEB,
            capture_output=True,
            text=True,
            timeout=660,
        )
        server.shutdown()
    if run.returncode != 0:
        raise SystemExit(f"the browser side failed: {run.stderr[-3000:]}")
    result = json.loads(run.stdout)
    if "error" in result:
        raise SystemExit(f"the browser side failed: {result['error']}")
    return result


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


def machine_note(cpu: int, node: dict, web: dict) -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"machine: {model}, {os.cpu_count()} cores, every run pinned to core {cpu}; load average {load} "
        f"(other processes share the cores); Python onnxruntime {ort.__version__}, {node['runtime']} on "
        f"node {node['node']}, {web['runtime']} in {chromium}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--encode-batch", type=int, default=20)
    parser.add_argument("--cpu", type=int, default=1)
    args = parser.parse_args()
    if not (PAGES / "heads-node.mjs").is_file():
        raise SystemExit("the SDK's bench pages are not built: run `make web`")
    if args.runs < 20 or args.warmup < 1 or args.encode_batch < 1:
        raise SystemExit(
            f"--runs {args.runs}, --warmup {args.warmup}, --encode-batch {args.encode_batch}: "
            "need at least 20 runs, 1 warm-up and 1 encode a run"
        )
    if args.cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"--cpu {args.cpu} is not one of this process's cores {sorted(os.sched_getaffinity(0))}")
    os.sched_setaffinity(0, {args.cpu})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle_dir = args.bundle or work / "bundle"
        if args.bundle is None:
            export = ["export", "efficientnet_lite0", "--cut", CUT, "--codec", "fp16+zstd", "--out", str(bundle_dir)]
            result = CliRunner().invoke(app, export)
            if result.exit_code != 0:
                raise SystemExit(result.output)
        bundle = load_bundle(bundle_dir)
        manifest = bundle.manifest
        if bundle.head_path is None or manifest.preprocess is None or len(manifest.cut) != 1:
            raise SystemExit(f"bundle {bundle_dir}: needs a head, image preprocessing and a cut of one tensor")
        photo = evaluation_photos()[0]
        x = manifest.preprocess(np.asarray(photo.image))
        python = python_times(bundle.head_path, x, args.runs, args.warmup, args.encode_batch)
        cut = python["cut"]
        job = work / "job"
        job.mkdir()
        shutil.copyfile(bundle.head_path, job / "head.onnx")
        x.astype(np.float32).tofile(job / "input.f32")
        cut.astype(np.float32).tofile(job / "cut.f32")
        (job / "job.json").write_text(
            json.dumps(
                {
                    "inputDims": list(x.shape),
                    "cutDims": list(cut.shape),
                    "runs": args.runs,
                    "warmup": args.warmup,
                    "encodeBatch": args.encode_batch,
                }
            )
        )
        node = node_times(job, args.cpu)
        web = browser_times(job, args.cpu)
        head_note = f"head {bundle.head_path.name} {bundle.head_path.stat().st_size / 1e6:.2f} MB"

    print(
        f"bundle: {manifest.model_id} cut {manifest.cut_name} ({CUT}), {head_note}; input: photo {photo.name!r} through the manifest's "
        f"preprocessing, {list(x.shape)} float32; cut tensor {list(cut.shape)} float32 ({cut.nbytes} bytes)"
    )
    for name, side in (("onnxruntime-node", node), ("onnxruntime-web", web)):
        diff = float(np.max(np.abs(np.asarray(side["headOutput"], np.float32) - cut.ravel())))
        print(f"{name}'s head output vs Python's: max |Δ| {diff:.2e}")
    heads = Table(title=f"the head, ms: median / p90 of {args.runs} runs after {args.warmup} warm-up, 1 thread")
    for column in ("runtime", "median / p90 ms", "× Python"):
        heads.add_column(column, justify="left" if column == "runtime" else "right")
    base = stats(python["headMs"])[0]
    for name, times in (
        ("Python onnxruntime (1 intra-op thread)", python["headMs"]),
        ("onnxruntime-node (1 thread)", node["headMs"]),
        ("onnxruntime-web, WASM SIMD, 1 thread, Chromium", web["headMs"]),
    ):
        heads.add_row(name, cell(times), f"{stats(times)[0] / base:.2f}")
    encodes = Table(
        title=f"encode of the cut tensor, ms: median / p90 of {args.runs} runs after {args.warmup} warm-up, "
        f"each run the mean of {args.encode_batch} encodes"
    )
    for column in ("codec", "bytes", "Python (protos.codec)", "SDK in Node", "SDK in Chromium"):
        encodes.add_column(column, justify="left" if column == "codec" else "right")
    for name in CODECS:
        # Uncompressed, the SDK writes Python's bytes exactly (conformance vectors); zstd frames may differ.
        if not name.endswith("+zstd") and {node["encodedBytes"][name], web["encodedBytes"][name]} != {
            python["encodedBytes"][name]
        }:
            raise SystemExit(
                f"{name}: the SDK encoded {node['encodedBytes'][name]} bytes, Python {python['encodedBytes'][name]}"
            )
        encodes.add_row(
            name,
            str(python["encodedBytes"][name]),
            cell(python["encodeMs"][name]),
            cell(node["encodeMs"][name]),
            cell(web["encodeMs"][name]),
        )
    console = Console(width=140)
    console.print(heads)
    console.print(encodes)
    print(machine_note(args.cpu, node, web))


if __name__ == "__main__":
    main()
