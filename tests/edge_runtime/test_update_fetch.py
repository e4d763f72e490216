"""How the device fetches a version (edge_runtime.updates), against servers on loopback that
misbehave the ways a network or a hostile server can: a stream cut off mid-file is resumed from
the bytes received; chunks out of place, a file announced larger than any ONNX file or ended
short are refused with an error that says so, and nothing of the version is kept. One client
shared by several threads switches between their requests, never inside one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import build_bundle, reference_output, tiny_input

from cloud_runtime.bundle_files import file_chunks
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from cloud_runtime.tails import TailService
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.updates import MAX_FILE_BYTES, UpdateRefusedError
from protos.bundle import Bundle
from protos.splitinfer.v1 import inference_pb2 as pb

Chunks = Callable[[pb.FetchBundleFileRequest, grpc.ServicerContext, Iterator[pb.FileChunk]], Iterator[pb.FileChunk]]


class _FileServer:
    """ListModels and FetchBundleFile of a real TailService, each fetch's chunks passed through
    `alter` (what a broken link or a hostile server does to them)."""

    def __init__(self, bundles: list[Bundle], alter: Chunks) -> None:
        self.tails = TailService(bundles, threads=1)
        self.alter = alter
        self.calls: list[pb.FetchBundleFileRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {
            "ListModels": grpc.unary_unary_rpc_method_handler(
                lambda request, context: self.tails.list_models(),
                request_deserializer=pb.ListModelsRequest.FromString,
                response_serializer=pb.ListModelsResponse.SerializeToString,
            ),
            "FetchBundleFile": grpc.unary_stream_rpc_method_handler(
                self._fetch,
                request_deserializer=pb.FetchBundleFileRequest.FromString,
                response_serializer=pb.FileChunk.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("splitinfer.v1.SplitInference", handlers),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _fetch(self, request: pb.FetchBundleFileRequest, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        self.calls.append(request)
        bundle = self.tails.served_bundle(request.model_id, request.bundle_hash)
        try:
            chunks = file_chunks(bundle, request.file, request.offset)
        except Exception as err:
            context.abort(err.status_code, str(err))
        yield from self.alter(request, context, chunks)

    def close(self) -> None:
        self.server.stop(None)
        self.tails.close()


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Bundle, Bundle]:
    v1 = build_bundle(tmp_path / "v1", version=1)
    return v1, build_bundle(tmp_path / "v2", version=2, seed=1)


def _update_through(versions, tmp_path: Path, alter: Chunks) -> tuple[EdgeClient, _FileServer]:
    server = _FileServer(list(versions), alter)
    return EdgeClient(versions[0].path, server.address, EdgeConfig(update_cache=tmp_path / "cache")), server


def test_a_fetch_cut_off_mid_file_resumes_from_the_bytes_received(versions, tmp_path: Path) -> None:
    cut = set()

    def cut_once(request, context, chunks):
        for chunk in chunks:
            if request.file == "head.onnx" and request.file not in cut:
                cut.add(request.file)
                yield pb.FileChunk(offset=chunk.offset, data=chunk.data[:100], size=chunk.size)
                context.abort(grpc.StatusCode.UNAVAILABLE, "link lost")
            yield chunk

    client, server = _update_through(versions, tmp_path, cut_once)
    try:
        assert client.update()
        heads = [(c.file, c.offset) for c in server.calls if c.file == "head.onnx"]
        assert heads == [("head.onnx", 0), ("head.onnx", 100)]
        assert client.bundle.manifest.version == 2
    finally:
        client.close()
        server.close()


def _misplaced(request, context, chunks):
    for chunk in chunks:
        yield pb.FileChunk(offset=chunk.offset + 1, data=chunk.data, size=chunk.size)


def _huge(request, context, chunks):
    for chunk in chunks:
        yield pb.FileChunk(offset=chunk.offset, data=chunk.data, size=MAX_FILE_BYTES + 1)


def _short(request, context, chunks):
    for chunk in chunks:
        yield pb.FileChunk(offset=chunk.offset, data=chunk.data[:-1], size=chunk.size)


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (_misplaced, r"sent bytes 1\.\.\d+ of manifest.json \(size \d+\) where byte 0 of \d+ was due"),
        (_huge, "announces manifest.json as 2147483649 bytes"),
        (_short, r"ended manifest.json after \d+ of \d+ bytes"),
    ],
    ids=["misplaced", "huge", "short"],
)
def test_a_file_that_does_not_arrive_whole_is_refused(versions, tmp_path: Path, alter, message: str) -> None:
    client, server = _update_through(versions, tmp_path, alter)
    try:
        with pytest.raises(UpdateRefusedError, match=message):
            client.update()
        assert client.bundle.manifest.version == 1
        assert list((tmp_path / "cache").iterdir()) == []
    finally:
        client.close()
        server.close()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the requests stopped"
        time.sleep(0.001)


def test_one_client_shared_by_threads_switches_between_their_requests(versions, tmp_path: Path) -> None:
    x = tiny_input()
    expected = {1: reference_output(x, 0), 2: reference_output(x, 1)}
    answers: list[int] = []
    by_thread: dict[int, list[int]] = {}
    stop = threading.Event()

    def requests(client: EdgeClient, index: int) -> None:
        mine = by_thread.setdefault(index, [])
        while not stop.is_set():
            logits = client.infer(x).outputs["logits"]
            version = next((v for v, e in expected.items() if np.allclose(logits, e, atol=1e-5)), 0)
            mine.append(version)
            answers.append(version)

    with serve(ServerConfig([versions[0].path, versions[1].path], threads=1)) as running:
        with EdgeClient(versions[0].path, running.address, EdgeConfig(update_cache=tmp_path / "cache")) as client:
            threads = [threading.Thread(target=requests, args=(client, i)) for i in range(4)]
            for thread in threads:
                thread.start()
            _wait_for(lambda: len(answers) >= 20)
            assert client.update()
            switched = len(answers)
            _wait_for(lambda: len(answers) >= switched + 40)
            stop.set()
            for thread in threads:
                thread.join()
    assert 0 not in answers
    # A request under way at the switch finishes on version 1 (at most one a thread); then only 2.
    assert answers[switched:].count(1) <= 4
    for mine in by_thread.values():
        assert mine == sorted(mine) and mine[-1] == 2, mine
