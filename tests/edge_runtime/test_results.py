"""The one result builder: whoever answered a request (the server, the tail here as a fallback, the
device winning a race, or the head alone), each field of EdgeResult means the same."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge_runtime.race import DEVICE, SERVER
from edge_runtime.results import Answer, Prepared, build_result
from protos.codec import Codec, encode
from protos.splitinfer.v1 import inference_pb2 as pb

OUTPUTS = {"logits": np.arange(4, dtype=np.float32)}


def _prepared(*, has_tail: bool = True) -> Prepared:
    cut = {"t": np.ones(16, dtype=np.float32)}
    request = pb.InferRequest(request_id="r1", model_id="m", bundle_hash="h")
    if has_tail:
        request.tensors.append(encode("t", cut["t"], Codec("fp16")))
    variant = SimpleNamespace(manifest=SimpleNamespace(has_tail=has_tail, cut_name="a"))
    return Prepared(cut, request, 100.0, 3.0, 2.0, 4.0, variant, Codec("fp16"))  # type: ignore[arg-type]


def _reply() -> pb.InferResponse:
    response = pb.InferResponse(request_id="r1", timing=pb.ServerTiming(decode_ms=1.0, tail_ms=5.0, total_ms=7.0))
    response.outputs.append(encode("logits", OUTPUTS["logits"], Codec()))
    return response


def test_the_servers_answer() -> None:
    prepared, reply = _prepared(), _reply()
    answer = Answer(OUTPUTS, 100.020, response=reply, sent=100.005, received=100.017)
    result = build_result(prepared, answer, attempts=2)
    t = result.timing
    assert (t.head_ms, t.encode_ms, t.decode_ms, t.tail_ms, t.server_ms) == (3.0, 2.0, 1.0, 5.0, 7.0)
    assert t.device_cpu_ms == 4.0
    assert t.network_ms == pytest.approx(12.0 - 7.0)
    assert t.output_decode_ms == pytest.approx(3.0) and t.total_ms == pytest.approx(20.0)
    assert result.bytes_sent == 32 and result.request_bytes == prepared.request.ByteSize()
    assert result.response_bytes == reply.ByteSize() and result.request_id == "r1" and result.attempts == 2
    assert (result.cut, result.codec, result.fallback, result.raced, result.winner) == ("a", "fp16", False, False, "")


def test_a_network_time_below_the_servers_own_is_clamped() -> None:
    answer = Answer(OUTPUTS, 100.010, response=_reply(), sent=100.0, received=100.005)
    assert build_result(_prepared(), answer).timing.network_ms == 0.0


def test_the_tail_run_here_as_a_fallback() -> None:
    result = build_result(_prepared(), Answer(OUTPUTS, 100.030, tail_ms=9.0), attempts=0, reason="server gone")
    t = result.timing
    assert (t.encode_ms, t.network_ms, t.decode_ms, t.tail_ms) == (2.0, 0, 0, 9.0)
    assert t.server_ms == 0 and t.output_decode_ms == 0
    assert t.total_ms == pytest.approx(30.0)
    assert (result.bytes_sent, result.request_bytes, result.response_bytes, result.attempts) == (0, 0, 0, 0)
    assert result.fallback and result.fallback_reason == "server gone" and result.codec == "-" and not result.raced


def test_the_device_winning_a_race_counts_what_was_sent() -> None:
    prepared = _prepared()
    result = build_result(prepared, Answer(OUTPUTS, 100.030, tail_ms=9.0), winner=DEVICE)
    assert result.bytes_sent == 32 and result.request_bytes == prepared.request.ByteSize()
    assert result.response_bytes == 0
    assert (result.codec, result.raced, result.winner, result.fallback) == ("fp16", True, DEVICE, False)
    assert result.timing.network_ms == 0 and result.timing.tail_ms == 9.0


def test_the_server_winning_a_race() -> None:
    answer = Answer(OUTPUTS, 100.020, response=_reply(), sent=100.005, received=100.017)
    result = build_result(_prepared(), answer, winner=SERVER)
    assert (result.raced, result.winner, result.codec) == (True, SERVER, "fp16") and result.timing.server_ms == 7.0


def test_the_head_alone_sends_nothing() -> None:
    prepared = _prepared(has_tail=False)
    result = build_result(prepared, Answer(dict(prepared.cut), 100.010))
    assert result.timing.encode_ms == 0.0 and result.timing.tail_ms == 0.0
    assert result.timing.total_ms == pytest.approx(10.0)
    assert (result.bytes_sent, result.request_bytes, result.response_bytes, result.codec) == (0, 0, 0, "-")
    assert list(result.outputs) == ["t"] and not result.fallback and result.attempts == 1
