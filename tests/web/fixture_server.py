"""The Python side of the TypeScript SDK's tests (edge_runtime/web/src/test): builds the tiny
bundle, serves it with a web port (one server open, one behind tokens, one behind mutual TLS,
one whose queue fills), writes what Python makes
of the same inputs, prints one JSON line saying where everything is, and serves until its
standard input closes.

What it writes into the work directory, for the SDK to reproduce:
- `input.f32`: the tiny model's input; `expected-<codec>.f32`: the logits Python's EdgeClient
  gets back from the server for it under each codec;
- `cut.f32`: the head's output for that input, and `encoded-<codec>.bin` the payload Python's
  encoder makes of it (before compression), so encodings can be compared byte for byte;
- `image-<n>.rgb` (+ its width, height, channels in the JSON) and `image-<n>.f32`: photos
  and the tensor protos.preprocess makes of each with the bundle's preprocessing;
- `multi-input.f32` and `multi-expected.f32`: the input of tests/multicut.py's multi-cut bundle
  (`multi`, served at `multi_web`) and the unsplit model's logits for it.

Run as `python tests/web/fixture_server.py WORKDIR` from the repository root.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import zstandard
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batched_bundles import batchable_bundle  # noqa: E402
from bundles import build_bundle, tiny_input  # noqa: E402
from multicut import build_multi_cut, multi_input, multi_reference  # noqa: E402

from cloud_runtime.batch_queue import BatchingConfig  # noqa: E402
from cloud_runtime.certs import write_dev_certs  # noqa: E402
from cloud_runtime.config import ServerConfig  # noqa: E402
from cloud_runtime.server import serve  # noqa: E402
from edge_runtime.client import EdgeClient  # noqa: E402
from edge_runtime.config import EdgeConfig  # noqa: E402
from protos.codec import Codec, decode, encode  # noqa: E402
from protos.preprocess import ImagePreprocess  # noqa: E402
from protos.tls import TLSFiles  # noqa: E402

CODECS = ("fp32", "fp16", "int8", "int8ch", "int4ch", "int8+zstd", "fp16+zstd")
TOKEN = "web-sdk-test-token"
# Odd sizes, both orientations, shrinking and enlarging, grey and alpha: every branch of the resize.
# (100, 400) shrinks its height by more than twice its width: Pillow resizes vertically first.
IMAGES = ((37, 53, 3), (300, 200, 1), (64, 64, 4), (9, 120, 3), (5, 4, 3), (100, 400, 3))
# Pillow's resize alone, on random sizes both ways (the preprocessing keeps the aspect ratio).
RESIZES = 120
PREPROCESS = ImagePreprocess(size=24, resize=27, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def write_fixtures(work: Path, bundle, address: str) -> dict:
    x = tiny_input()
    x.tofile(work / "input.f32")
    import onnxruntime as ort

    head = ort.InferenceSession(str(bundle.head_path), providers=["CPUExecutionProvider"])
    (cut,) = head.run(None, {bundle.manifest.inputs[0].name: x})
    cut.astype(np.float32).tofile(work / "cut.f32")
    for codec in CODECS:
        name = codec.replace("+", "-")
        tensor = encode("act", cut, Codec.parse(codec))
        raw = encode("act", cut, Codec(Codec.parse(codec).encoding))
        (work / f"encoded-{name}.bin").write_bytes(raw.data)
        assert np.array_equal(decode(tensor), decode(raw))
        client = EdgeClient(bundle, address, EdgeConfig(codec=codec))
        try:
            result = client.infer(x)
        finally:
            client.close()
        next(iter(result.outputs.values())).astype(np.float32).tofile(work / f"expected-{name}.f32")
    images = []
    rng = np.random.default_rng(7)
    for n, (w, h, c) in enumerate(IMAGES):
        # Smooth gradients plus noise: resize errors show in both.
        yy, xx = np.mgrid[0:h, 0:w]
        base = (xx * 255 // max(w - 1, 1) + yy * 128 // max(h - 1, 1))[:, :, None] + rng.integers(0, 60, (h, w, c))
        image = np.clip(base, 0, 255).astype(np.uint8)
        image = image[:, :, 0] if c == 1 else image
        image.tofile(work / f"image-{n}.rgb")
        PREPROCESS(image).tofile(work / f"image-{n}.f32")
        images.append({"file": f"image-{n}.rgb", "tensor": f"image-{n}.f32", "width": w, "height": h, "channels": c})
    # A zstd frame that does not declare its size, larger than a MiB (a streaming compressor's).
    big = rng.standard_normal(600_000).astype(np.float32)
    big.tofile(work / "big.f32")
    (work / "big-unsized.zst").write_bytes(zstandard.ZstdCompressor(write_content_size=False).compress(big.tobytes()))
    resizes = []
    for n in range(RESIZES):
        h, w, new_w, new_h = (int(v) for v in rng.integers(1, 90, 4))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image.tofile(work / f"resize-{n}.rgb")
        np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)).tofile(work / f"resized-{n}.rgb")
        resizes.append({"n": n, "width": w, "height": h, "new_width": new_w, "new_height": new_h})
    return {"codecs": CODECS, "images": images, "resizes": resizes, "preprocess": PREPROCESS.to_dict()}


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(work / "bundle")
    (work / "tokens").write_text(f"web-sdk {TOKEN}\n")
    open_server = serve(ServerConfig([bundle], threads=1, max_workers=8, web_port=0))
    guarded = serve(ServerConfig([bundle], threads=1, max_workers=8, web_port=0, tokens=work / "tokens"))
    certs = write_dev_certs(work / "certs")
    mutual = TLSFiles(certs.server_cert, certs.server_key, certs.ca)
    secure = serve(ServerConfig([bundle], threads=1, max_workers=8, web_port=0, tls=mutual))
    # Every batch waits 400 ms and two requests may wait: a third sent meanwhile is refused
    # RESOURCE_EXHAUSTED with a retry hint.
    slow_batches = BatchingConfig(window_ms=400, max_batch=8, max_queue=2, fixed_window=True)
    batched = batchable_bundle(work / "batchable")
    crowded = serve(ServerConfig([batched], threads=1, web_port=0, batching=slow_batches))
    multi = build_multi_cut(work / "multi")
    multi_server = serve(ServerConfig([multi.path], threads=1, max_workers=4, web_port=0))
    try:
        x = multi_input(3)
        x.tofile(work / "multi-input.f32")
        multi_reference(x).astype(np.float32).tofile(work / "multi-expected.f32")
        info = write_fixtures(work, bundle, open_server.address)
        info.update(
            bundle=str(bundle.path),
            work=str(work),
            web=f"http://127.0.0.1:{open_server.web_port}",
            grpc=f"http://{open_server.address}",
            guarded=f"http://127.0.0.1:{guarded.web_port}",
            token=TOKEN,
            secure=f"https://127.0.0.1:{secure.web_port}",
            secure_grpc=f"https://{secure.address}",
            certs={"ca": str(certs.ca), "cert": str(certs.client_cert), "key": str(certs.client_key)},
            crowded=f"http://127.0.0.1:{crowded.web_port}",
            crowded_bundle=str(batched.path),
            multi=str(multi.path),
            multi_web=f"http://127.0.0.1:{multi_server.web_port}",
        )
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the test closes it (or dies)
    finally:
        multi_server.stop(0)
        crowded.stop(0)
        secure.stop(0)
        guarded.stop(0)
        open_server.stop(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
