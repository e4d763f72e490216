"""Stock clients against a real server: grpc.health.v1 with the generated HealthStub, and a
reflection client that finds the service and calls it without splitinfer's stubs."""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from batched_bundles import batchable_bundle
from bundles import request_for, tiny_input
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from protos.bundle import load_bundle
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

SERVICE = "splitinfer.v1.SplitInference"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        )


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_is_serving_once_the_tails_are_loaded(tiny_server: str, service: str) -> None:
    assert check(tiny_server, service) == SERVING


def test_health_of_an_unknown_service_is_not_found(tiny_server: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        check(tiny_server, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.timeout(30)
def test_health_turns_not_serving_when_shutdown_starts_while_in_flight_calls_drain(tiny_bundle: Path) -> None:
    good = request_for(load_bundle(tiny_bundle), tiny_input())
    running = serve(ServerConfig([tiny_bundle], health_port=0))
    health_address = f"127.0.0.1:{running.health_port}"
    try:
        with grpc.insecure_channel(running.address) as channel, grpc.insecure_channel(health_address) as probe:
            watch = health_pb2_grpc.HealthStub(probe).Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=20)
            assert next(watch).status == SERVING
            outbox: queue.Queue[pb.InferRequest | None] = queue.Queue()
            replies = pb_grpc.SplitInferenceStub(channel).InferStream(iter(outbox.get, None), timeout=20)
            outbox.put(good)
            assert not next(replies).HasField("error")

            stopped = running.shutdown(grace_s=15)
            # Watchers hear it at once, and a probe asking now is told so, while the drain goes on.
            assert next(watch).status == NOT_SERVING
            assert check(health_address, SERVICE) == NOT_SERVING
            assert check(health_address, "") == NOT_SERVING
            outbox.put(good)
            assert not next(replies).HasField("error"), "the in-flight stream was cut off"
            assert not stopped.is_set()
            outbox.put(None)
            assert list(replies) == []
            assert stopped.wait(10), "the server did not stop once its last call ended"
    finally:
        running.stop(0)


def test_the_health_port_answers_health_checks_only(tiny_bundle: Path) -> None:
    with serve(ServerConfig([tiny_bundle], health_port=0)) as running:
        health_address = f"127.0.0.1:{running.health_port}"
        assert running.health_port not in (None, running.port)
        assert check(health_address, SERVICE) == SERVING
        with grpc.insecure_channel(health_address) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.SplitInferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_reflection_client_finds_the_service_and_calls_it_without_stubs(tiny_server: str) -> None:
    with grpc.insecure_channel(tiny_server) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        # A pool of its own, filled only from the server: nothing comes from the local stubs.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        assert service.file.name == "protos/splitinfer/v1/inference.proto"
        assert {m.name: (m.input_type.full_name, m.server_streaming) for m in service.methods} == {
            "Infer": ("splitinfer.v1.InferRequest", False),
            "InferStream": ("splitinfer.v1.InferRequest", True),
            "ListModels": ("splitinfer.v1.ListModelsRequest", False),
            "FetchBundleFile": ("splitinfer.v1.FetchBundleFileRequest", True),
        }
        method = service.methods_by_name["ListModels"]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        list_models = channel.unary_unary(
            f"/{SERVICE}/ListModels",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = list_models(request_class(), timeout=5)
    assert sorted(b.model_id for b in reply.bundles) == ["tiny", "tiny-dag"]
    assert all(len(b.bundle_hash) == 64 for b in reply.bundles)


def test_health_says_not_serving_while_a_queue_is_full_and_serving_once_it_drains(tmp_path: Path) -> None:
    bundle = batchable_bundle(tmp_path / "b")
    # Requests wait out a 500 ms window, so two of them fill a queue of two for that long.
    batching = BatchingConfig(window_ms=500, max_batch=8, max_queue=2, fixed_window=True)
    with serve(ServerConfig([bundle], batching=batching, health_port=0)) as running:
        probe = f"127.0.0.1:{running.health_port}"

        def status() -> int:
            with grpc.insecure_channel(probe) as channel:
                request = health_pb2.HealthCheckRequest(service=SERVICE)
                return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

        assert status() == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(running.address) as channel, ThreadPoolExecutor(2) as pool:
            stub = pb_grpc.SplitInferenceStub(channel)
            waiting = [pool.submit(stub.Infer, request_for(bundle, tiny_input(i)), timeout=30) for i in range(2)]
            deadline = time.monotonic() + 5
            while running.tails.queue_depth("tiny") < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
            assert all(f.result().outputs for f in waiting)
        assert status() == health_pb2.HealthCheckResponse.SERVING
