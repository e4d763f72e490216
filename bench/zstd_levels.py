"""zstd level and dictionary, measured on real activations: what the codec's compression should be.

For the PP-OCRv4 recogniser, detector and direction classifier, at evenly spaced cuts, the head's
activations on real inputs (text lines cut from rendered and scanned documents; the documents) are encoded
(int8ch and fp16) and compressed at each zstd level: ratio over raw fp32 and compress/decompress ms
per 100 KB of raw activation on one core (medians).

Then a zstd dictionary (`zstandard.train_dictionary`) is trained on the encoded activations of
half the inputs and used on the other half: the ratio with and without it, its size, and the
compress time with it. A dictionary helps only when a message is small enough that zstd has not
yet learned its statistics from the message itself.

    .venv/bin/python bench/zstd_levels.py [--models ppocr_rec,ppocr_det,ppocr_cls] [--inputs 12] [--cuts 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import zstandard
from rich.console import Console
from rich.table import Table

from protos import codec as wire_codec
from splitter.export.bundle import split_model
from splitter.pipeline import model_cuts
from splitter.profile.timing import session
from splitter.sources import ModelSource, load_source

LEVELS = (-50, -5, -1, 1, 3, 6, 9, 19)
ENCODINGS = ("int8ch", "fp16")
DICT_SIZES = (4 << 10, 16 << 10, 64 << 10)


def inputs(name: str, source: ModelSource, count: int) -> list[dict[str, np.ndarray]]:
    from splitter.tasks import ocr

    engine = ocr._engine()
    (shape,) = source.input_shapes.values()
    if name == "ppocr_rec":
        ratio = shape[3] / shape[2]
        return [{"x": engine.text_rec.resize_norm_img(line, ratio)[None]} for line in ocr.text_lines(count, ratio)]
    if name == "ppocr_cls":
        return [
            {"x": engine.text_cls.resize_norm_img(line)[None]} for line in ocr.text_lines(count, shape[3] / shape[2])
        ]
    return [{"x": engine.text_det.get_preprocess(max(d.shape[:2]))(d)} for _, d in ocr.documents(count)]


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def payloads(activations: list[dict[str, np.ndarray]], encoding: str) -> list[bytes]:
    """The encoded bytes zstd sees: one per tensor of each input."""
    codec = wire_codec.Codec(encoding)
    return [wire_codec.encode(n, a, codec).data for acts in activations for n, a in acts.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ppocr_rec,ppocr_det")
    parser.add_argument("--inputs", type=int, default=12)
    parser.add_argument("--cuts", type=int, default=4)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    console = Console(width=150)
    levels = Table(
        title="zstd level: ratio over raw fp32 / compress ms per 100 KB raw / decompress ms per 100 KB raw (medians)",
        title_justify="left",
    )
    for header in ("model", "cut", "raw KB", "encoding", *(f"zstd {lvl}" for lvl in LEVELS)):
        levels.add_column(header, justify="left" if header in ("model", "cut", "encoding") else "right")
    dictionary = Table(
        title="zstd dictionary trained on half the inputs, used on the other half (level 1)", title_justify="left"
    )
    for header in (
        "model",
        "cut",
        "raw KB",
        "encoding",
        "no dict",
        *(f"dict {s >> 10} KB" for s in DICT_SIZES),
        "ms/100KB no dict → dict",
    ):
        dictionary.add_column(header, justify="left" if header in ("model", "cut", "encoding") else "right")
    for name in args.models.split(","):
        source = load_source(name)
        candidates = [c for c in model_cuts(source) if not c.is_edge_only and not c.is_cloud_only]
        step = max(1, len(candidates) // args.cuts)
        feeds = inputs(name, source, args.inputs)
        for cut in candidates[step // 2 :: step][: args.cuts]:
            head = session(split_model(source.model, cut)[0], threads=1)
            names = [o.name for o in head.get_outputs()]
            activations = [dict(zip(names, head.run(None, feed))) for feed in feeds]
            raw = sum(a.nbytes for a in activations[0].values())
            for encoding in ENCODINGS:
                data = payloads(activations, encoding)
                cells = []
                for level in LEVELS:
                    compressor, decompressor = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
                    frames = [compressor.compress(d) for d in data]
                    ratio = raw * len(activations) / sum(map(len, frames))
                    enc = median_ms(lambda: [compressor.compress(d) for d in data]) / len(activations)
                    dec = median_ms(lambda: [decompressor.decompress(f) for f in frames]) / len(activations)
                    cells.append(f"{ratio:.2f}× {enc / (raw / 1e5):.2f}/{dec / (raw / 1e5):.2f}")
                levels.add_row(name, cut.name, f"{raw / 1e3:,.1f}", encoding, *cells)
                per_input = len(data) // len(activations)
                train, test = (
                    data[: len(data) // 2 // per_input * per_input],
                    data[len(data) // 2 // per_input * per_input :],
                )
                test_raw = raw * len(test) / per_input
                plain = zstandard.ZstdCompressor(level=1)
                no_dict = test_raw / sum(len(plain.compress(d)) for d in test)
                no_dict_ms = median_ms(lambda: [plain.compress(d) for d in test]) / (test_raw / 1e5)
                cells, dict_ms = [], float("nan")
                for size in DICT_SIZES:
                    try:
                        trained = zstandard.train_dictionary(size, train)
                    except zstandard.ZstdError as err:  # too few samples for this size
                        cells.append(f"({err})"[:24])
                        continue
                    with_dict = zstandard.ZstdCompressor(level=1, dict_data=trained)
                    cells.append(f"{test_raw / sum(len(with_dict.compress(d)) for d in test):.2f}×")
                    dict_ms = median_ms(lambda: [with_dict.compress(d) for d in test]) / (test_raw / 1e5)
                dictionary.add_row(
                    name,
                    cut.name,
                    f"{raw / 1e3:,.1f}",
                    encoding,
                    f"{no_dict:.2f}×",
                    *cells,
                    f"{no_dict_ms:.2f} → {dict_ms:.2f}",
                )
            levels.add_section()
    console.print(levels)
    console.print(dictionary)


if __name__ == "__main__":
    main()
