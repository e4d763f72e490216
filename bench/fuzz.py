"""Fuzzing a real server: malformed, mutated and hostile messages sent as raw bytes, each answered
with a proper gRPC status, none crashing or hanging the server or growing its memory.

A `splitinfer serve` process serves a bundle (`--bundle`, default: mobilenet_v2 cut at features.7,
exported here). From one valid request (random activations of the cut's shapes, encoded with the
bundle's codec) `--count` inputs are made by a seeded generator, each one of: random bytes, a
truncated or bit-flipped valid request, two requests spliced, or a valid request with fields set
to hostile values (unknown enum values, huge, negative or many dimensions, payloads of the wrong
size, bad or bomb zstd frames, non-finite or mismatched scales, wrong names, hashes and models,
thousands of tensors, megabyte ids). They go to Infer through a generic method (bytes in, bytes
out; no client-side checks), and now and then as a stream of several to InferStream, from
`--workers` threads, each call with a deadline.

Checked: every call ends with a status from the server before its deadline (a client-side
DEADLINE_EXCEEDED is a hang), that status is one the servicer sends on purpose (OK, or a refusal
with a message: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED), an OK reply
parses; the server process stays up; its RSS, sampled every second, stays under `--max-rss-mb` and
does not grow by more than `--max-growth-mb` after the first tenth of the run; and afterwards a
good request still gets the right answer. Exit code 0 when all hold.

    .venv/bin/python bench/fuzz.py [--count 100000] [--bundle DIR] [--workers 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import zstandard

from protos.bundle import Bundle, load_bundle
from protos.codec import Codec, encode
from protos.splitinfer.v1 import inference_pb2 as pb

INFER = "/splitinfer.v1.SplitInference/Infer"
INFER_STREAM = "/splitinfer.v1.SplitInference/InferStream"
# Statuses the servicer sends on purpose; each refusal carries a message naming the problem.
PROPER = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}
MAX_MESSAGE_BYTES = 8 << 20
# The bundle only has to be served: the untrained network's int8 flips (about 1 in 9 photos)
# are no concern of a serving benchmark, so export's accuracy budget is set wide.
SERVING_ONLY_BUDGET = 0.5


def valid_request(bundle: Bundle, rng: np.random.Generator, request_id: str = "fuzz") -> pb.InferRequest:
    manifest = bundle.manifest
    codec = Codec.parse(manifest.codec)
    tensors = [
        encode(spec.name, rng.standard_normal([max(d, 1) for d in spec.shape]).astype(spec.dtype), codec)
        for spec in manifest.cut
    ]
    return pb.InferRequest(
        request_id=request_id, model_id=manifest.model_id, bundle_hash=manifest.bundle_hash, tensors=tensors
    )


class Mutator:
    """Hostile variants of one valid request, reproducible from `seed`."""

    def __init__(self, valid: pb.InferRequest, seed: int) -> None:
        self.valid = valid
        self.raw = valid.SerializeToString()
        self.rng = random.Random(seed)
        self._bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20))
        self.strategies: list[tuple[str, Callable[[], bytes]]] = [
            ("random bytes", self.random_bytes),
            ("truncated", self.truncated),
            ("bit flips", self.bit_flips),
            ("spliced", self.spliced),
            ("hostile field", self.hostile_field),
            ("hostile field", self.hostile_field),
            ("hostile field", self.hostile_field),
            ("valid", lambda: self.raw),
        ]

    def next(self) -> tuple[str, bytes]:
        name, make = self.rng.choice(self.strategies)
        return name, make()

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 2, 7, 64, 1000, 20000)))

    def truncated(self) -> bytes:
        return self.raw[: self.rng.randrange(len(self.raw))]

    def bit_flips(self) -> bytes:
        data = bytearray(self.raw)
        for _ in range(self.rng.choice((1, 2, 8, 64))):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def spliced(self) -> bytes:
        # Protobuf merges concatenated messages: repeated tensors double, strings are replaced.
        cut = self.rng.randrange(len(self.raw))
        return self.raw[:cut] + self.raw if self.rng.random() < 0.5 else self.raw + self.raw

    def hostile_field(self) -> bytes:
        request = pb.InferRequest()
        request.CopyFrom(self.valid)
        rng = self.rng
        tensor = request.tensors[rng.randrange(len(request.tensors))] if request.tensors else request.tensors.add()
        choice = rng.randrange(22)
        if choice == 0:
            tensor.dtype = rng.choice((-1, 0, 8, 99, 2**31 - 1))
        elif choice == 1:
            tensor.encoding = rng.choice((-5, 0, 6, 1000))
        elif choice == 2:
            tensor.compression = rng.choice((-1, 0, 3, 77))
        elif choice == 3:
            tensor.ClearField("shape")
            tensor.shape.extend(
                rng.choice(([2**40, 2**40], [2**62], [-1, 64, 14, 14], [0, 64, 14, 14], [], [1] * 64, [2**31, 2]))
            )
        elif choice == 4:
            tensor.data = tensor.data[: rng.randrange(max(1, len(tensor.data)))]
        elif choice == 5:
            tensor.data = tensor.data + rng.randbytes(rng.choice((1, 7, 4096)))
        elif choice == 6:
            tensor.compression = pb.COMPRESSION_ZSTD
            tensor.data = rng.randbytes(rng.choice((0, 4, 100, 5000)))
        elif choice == 7:
            tensor.compression = pb.COMPRESSION_ZSTD
            tensor.data = self._bomb
        elif choice == 8:
            tensor.scale = rng.choice((float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e38))
        elif choice == 9:
            tensor.zero_point = rng.choice((-(2**31), 2**31 - 1, 1000))
        elif choice == 10:
            tensor.encoding = pb.ENCODING_INT8_CHANNEL
            tensor.channel_axis = rng.choice((-1, 0, 1, 3, 99, 2**31 - 1))
            tensor.channel_scales.extend([rng.choice((1.0, float("nan"), 0.0))] * rng.choice((0, 1, 64, 10000)))
            tensor.channel_zero_points.extend([0] * rng.choice((0, 63, 64)))
        elif choice == 11:
            tensor.encoding = pb.ENCODING_UINT4_CHANNEL
            tensor.channel_axis = 1
            tensor.channel_scales.extend([0.1] * 64)
            tensor.channel_zero_points.extend([8] * 64)
        elif choice == 12:
            tensor.name = rng.choice(("", "x" * 10000, "\u0000", "logits", tensor.name + "?"))
        elif choice == 13:
            request.tensors.add().CopyFrom(tensor)  # duplicated
        elif choice == 14:
            for _ in range(rng.choice((100, 5000))):
                request.tensors.add(name=str(rng.random()))
        elif choice == 15:
            request.ClearField("tensors")
        elif choice == 16:
            request.model_id = rng.choice(("", "nope", "m" * 100000, "\u202e"))
        elif choice == 17:
            request.bundle_hash = rng.choice(("", "0" * 64, "z" * 10000))
        elif choice == 18:
            request.request_id = rng.choice(("", "r" * (1 << 20), "\n\r\t"))
        elif choice == 19:
            tensor.dtype = pb.DTYPE_INT64
        elif choice == 20:
            tensor.data = b""
            tensor.ClearField("shape")
            tensor.shape.extend([1, 64, 14, 14])
        else:
            tensor.encoding = pb.ENCODING_FP16
        return request.SerializeToString()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(
    bundle: Bundle, count: int, workers: int, seed: int, deadline_s: float, max_rss_mb: float, max_growth_mb: float
) -> bool:
    from cloud_runtime.config import ServerConfig
    from cloud_runtime.process import start_server_process

    valid = valid_request(bundle, np.random.default_rng(seed))
    codes: Counter = Counter()
    problems: list[str] = []
    by_strategy: Counter = Counter()
    lock = threading.Lock()
    with start_server_process(ServerConfig([bundle], threads=1), extra_args=["--log-format", "json"]) as server:
        pid = server.process.pid
        samples: list[tuple[int, float]] = []
        done = threading.Event()
        sent = [0]

        def sample() -> None:
            while not done.wait(1.0):
                samples.append((sent[0], rss_mb(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        channels = [grpc.insecure_channel(server.address, options=options) for _ in range(workers)]
        infer = [c.unary_unary(INFER, request_serializer=None, response_deserializer=None) for c in channels]
        stream = [c.stream_stream(INFER_STREAM, request_serializer=None, response_deserializer=None) for c in channels]

        def check(strategy: str, code: str, details: str | None, reply: bytes | None) -> None:
            with lock:
                codes[code] += 1
                by_strategy[strategy] += 1
                if code not in PROPER:
                    problems.append(f"{strategy}: {code}: {details}")
                elif code != "OK" and not details:
                    problems.append(f"{strategy}: {code} without a message")
                elif reply is not None:
                    try:
                        response = pb.InferResponse.FromString(reply)
                    except Exception as err:
                        problems.append(f"{strategy}: OK reply does not parse: {err}")
                    else:
                        if response.HasField("error") and response.error.code == grpc.StatusCode.UNKNOWN.value[0]:
                            problems.append(f"{strategy}: in-band UNKNOWN: {response.error.message}")

        def worker(index: int) -> None:
            mutator = Mutator(valid, seed * 1000 + index)
            share = count // workers + (1 if index < count % workers else 0)
            done_here = 0
            while done_here < share:
                if mutator.rng.random() < 0.02:
                    # A stream of a few: each message answered in-band, the stream itself OK.
                    messages = [mutator.next() for _ in range(mutator.rng.randrange(1, min(6, share - done_here + 1)))]
                    try:
                        replies = list(stream[index](iter([m for _, m in messages]), timeout=deadline_s))
                        for (strategy, _), reply in zip(messages, replies):
                            check(strategy, "OK", None, reply)
                        if len(replies) != len(messages):
                            with lock:
                                problems.append(f"stream: {len(messages)} messages, {len(replies)} replies")
                    except grpc.RpcError as err:
                        for strategy, _ in messages:
                            check(strategy, err.code().name, err.details(), None)
                    done_here += len(messages)
                else:
                    strategy, message = mutator.next()
                    try:
                        reply = infer[index](message, timeout=deadline_s)
                        check(strategy, "OK", None, reply)
                    except grpc.RpcError as err:
                        check(strategy, err.code().name, err.details(), None)
                    done_here += 1
                sent[0] += 1

        start = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(worker, range(workers)))
        elapsed = time.monotonic() - start
        done.set()
        alive = server.process.poll() is None
        final_rss = rss_mb(pid) if alive else 0.0
        # Afterwards, a good request gets the right answer.
        good = pb.InferRequest()
        good.CopyFrom(valid)
        good.request_id = "after-fuzz"
        try:
            reply = pb.InferResponse.FromString(infer[0](good.SerializeToString(), timeout=30))
            good_ok = reply.request_id == "after-fuzz" and len(reply.outputs) == len(bundle.manifest.outputs)
        except grpc.RpcError as err:
            good_ok, reply = False, None
            problems.append(f"the good request after fuzzing failed: {err.code().name}: {err.details()}")
        for channel in channels:
            channel.close()
        exit_code = server.stop()

    rss = [r for _, r in samples] or [final_rss]
    settled = [r for n, r in samples if n >= count // 10] or rss
    growth = max(settled) - settled[0]
    print(
        f"inputs {sum(codes.values())} in {elapsed:.1f} s ({sum(codes.values()) / elapsed:.0f}/s) from {workers} workers, seed {seed}"
    )
    print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_strategy.items())))
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in codes.most_common()))
    print(
        f"server RSS: max {max(rss):.0f} MB, growth after the first tenth {growth:+.0f} MB; alive throughout: {alive}; "
        f"exit code on SIGTERM {exit_code}"
    )
    print(f"good request afterwards: {'answered' if good_ok else 'FAILED'}")
    for problem in problems[:20]:
        print(f"problem: {problem[:300]}")
    if len(problems) > 20:
        print(f"... {len(problems) - 20} more problems")
    ok = alive and good_ok and not problems and max(rss) <= max_rss_mb and growth <= max_growth_mb
    print("result: " + ("PASS" if ok else "FAIL"))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: export mobilenet_v2 at features.7)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline-s", type=float, default=20.0, help="per call; reaching it counts as a hang")
    parser.add_argument("--max-rss-mb", type=float, default=2048)
    parser.add_argument("--max-growth-mb", type=float, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle is None:
            from splitter.pipeline import export_model

            bundle, _ = export_model(
                "mobilenet_v2", Path(tmp) / "bundle", cut="features.7", codec="int8+zstd", max_error=SERVING_ONLY_BUDGET
            )
        else:
            bundle = load_bundle(args.bundle)
        ok = run(bundle, args.count, args.workers, args.seed, args.deadline_s, args.max_rss_mb, args.max_growth_mb)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
