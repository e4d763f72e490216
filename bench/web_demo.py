"""Split inference in a browser: the demo page in headless Chromium (edge_runtime/web, the head on
onnxruntime-web's single-threaded WebAssembly build), the server on loopback over gRPC-Web, each
stage's median milliseconds over every photo pick, and the bytes sent.

Exports EfficientNet-Lite0 at _blocks.7 (fp16+zstd) unless given a bundle; the photos are the
scikit-image evaluation photos, each picked --repeat times (the first pick of the page loads and
compiles the head, and is reported apart). Needs `make web` and /usr/bin/chromium.

    .venv/bin/python bench/web_demo.py [--bundle DIR] [--repeat 5] [--protocol grpc-web|connect]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from splitinfer.app import app
from splitinfer.commands.serving import DEMO_PAGE, built_demo_page
from splitter.models import evaluation_photos

WEB = DEMO_PAGE.parents[1]
STAGES = (
    "preprocessMs",
    "headMs",
    "encodeMs",
    "networkMs",
    "decodeMs",
    "queueMs",
    "tailMs",
    "outputDecodeMs",
    "totalMs",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--protocol", choices=("grpc-web", "connect"), default="grpc-web")
    args = parser.parse_args()
    if built_demo_page() is None:
        raise SystemExit("the demo page is not built: run `make web`")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or work / "bundle"
        if args.bundle is None:
            export = [
                "export",
                "efficientnet_lite0",
                "--cut",
                "_blocks.7",
                "--codec",
                "fp16+zstd",
                "--out",
                str(bundle),
            ]
            result = CliRunner().invoke(app, export)
            if result.exit_code != 0:
                raise SystemExit(result.output)
        picks = []
        for photo in evaluation_photos():
            for n in range(args.repeat):
                path = work / f"{photo.name}-{n}.png"  # a name per pick: the page tells picks apart by name
                Image.fromarray(np.asarray(photo.image)).save(path)
                picks.append(str(path))
        with serve(ServerConfig([bundle], threads=1, web_port=0, web_root=DEMO_PAGE)) as server:
            url = f"http://127.0.0.1:{server.web_port}/?protocol={args.protocol}"
            run = subprocess.run(["node", "drive-demo.mjs", url, *picks], cwd=WEB, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(run.stderr[-3000:])
    results = [json.loads(line)["result"] for line in run.stdout.splitlines()]
    first, rest = results[0], results[1:]
    table = Table(
        title=f"demo page, headless Chromium, {args.protocol}: median of {len(rest)} picks (first pick apart)"
    )
    for column in ("stage", "median ms", "first pick ms"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for stage in STAGES:
        table.add_row(
            stage.removesuffix("Ms"),
            f"{statistics.median(r['timing'][stage] for r in rest):.2f}",
            f"{first['timing'][stage]:.2f}",
        )
    Console().print(table)
    sent = statistics.median(r["bytesSent"] for r in results)
    agree = sum(r["matches"] for r in results)
    print(f"activation bytes sent: median {sent:.0f}; server's top-1 = the browser's own run: {agree}/{len(results)}")


if __name__ == "__main__":
    main()
