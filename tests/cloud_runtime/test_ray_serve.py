"""The tails on Ray Serve: a local Ray cluster, Serve with its gRPC proxy and two applications of
the tail deployment (one behind tokens, one autoscaled), and real requests from the edge client
through it, routed by its `application` metadata: unary and streamed inference, health from a
replica and from the proxy, the tokens check in the replica, updates' file fetches, and replicas
scaled out under load and back in after with every request answered. Skipped where Ray is not
installed (the `ray` extra: `make test` installs it; `dev` does not, since Ray is ~335 MB and
starts in ~20 s)."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from batched_bundles import batchable_bundle
from bundles import build_bundle, reference_output, tiny_input
from cli_runs import assert_ok, cli
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ports import free_port

from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY
from protos.bundle import Bundle
from protos.errors import BundleMismatchError, SplitInferError, UnknownModelError
from protos.signing import load_signing_key, sign_bundle, write_key_pair
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

# Found without importing it: importing Ray changes every log record of the process (it adds a
# timestamp attribute), which the other tests of this session should not see before it runs.
pytestmark = [
    pytest.mark.slow,
    # Deprecated for environment variables that Ray 2.60's replicas do not read yet: the field is
    # still what sets how often load is measured (FAST_AUTOSCALING).
    pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning"),
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="Ray is not installed: pip install '.[ray]' to run the Ray Serve test",
    ),
]


REPO = Path(__file__).resolve().parents[2]
# The two applications: with more than one, Ray's proxy routes each call by its `application` metadata.
GUARDED, SCALED = "splitinfer", "autoscaled"
TOKEN = "t0ken-of-edge-1"
TO_GUARDED = (("application", GUARDED),)
NEWER_SEED = 3
# Scaling as fast as Ray allows: load is measured every 0.5 s over 2 s, and acted on after 0.5 s
# (out) and 2 s (in); a replica scaled in is given 5 s to finish what it holds.
FAST_AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
    "upscale_delay_s": 0.5,
    "downscale_delay_s": 2.0,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return batchable_bundle(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def newer(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A later version of `bundle`'s model (another seed: other answers), served beside it by SCALED."""
    return build_bundle(tmp_path_factory.mktemp("newer"), version=1, seed=NEWER_SEED)


@pytest.fixture(scope="module")
def trust_key(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The public key of a fresh key pair whose private half signed `bundle`."""
    key, pub = write_key_pair(tmp_path_factory.mktemp("keys"))
    sign_bundle(bundle.path, load_signing_key(key))
    return pub


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"edge-1 {TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def ray_address(bundle: Bundle, newer: Bundle, trust_key: Path, tokens_file: Path) -> Iterator[str]:
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from cloud_runtime.ray_serve import GRPC_SERVICER_FUNCTIONS, TailDeployment, app, server_config

    grpc_port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(
            grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS),
            http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
        )
        # Signed, and the replicas told to trust only its key: they verify it as they load it.
        args = {"bundles": str(bundle.path), "threads": 1, "window_s": 0.05, "trust_keys": [str(trust_key)]}
        serve.run(app({**args, "tokens": str(tokens_file)}), name=GUARDED, route_prefix=f"/{GUARDED}")
        scaled = TailDeployment.options(
            autoscaling_config=FAST_AUTOSCALING,
            ray_actor_options={"num_cpus": 0.5},
            graceful_shutdown_wait_loop_s=0.5,
            graceful_shutdown_timeout_s=5,
        )
        unsigned = {"bundles": [str(bundle.path), str(newer.path)], "threads": 1, "window_s": 0.05}
        serve.run(scaled.bind(server_config(unsigned)), name=SCALED, route_prefix=f"/{SCALED}")
        yield f"127.0.0.1:{grpc_port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def guarded_config(**options) -> EdgeConfig:
    return EdgeConfig(timeout_s=60, token=TOKEN, metadata=TO_GUARDED, **options)


@pytest.mark.timeout(180)
def test_ray_serve_answers_the_edge_client_in_batches(bundle: Bundle, ray_address: str) -> None:
    with EdgeClient(bundle, ray_address, guarded_config()) as client:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda seed: client.infer(tiny_input(seed)), range(4)))
    # Requests of one batch share its tail call, and its time.
    assert len({result.timing.tail_ms for result in results}) < len(results)
    for seed, result in enumerate(results):
        assert not result.fallback and result.bytes_sent > 0
        np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(seed)), atol=1e-5, rtol=0)


@pytest.mark.timeout(180)
def test_ray_serve_streams_and_answers_a_refused_message_in_band(
    bundle: Bundle, tmp_path: Path, ray_address: str
) -> None:
    with EdgeClient(bundle, ray_address, guarded_config()) as client:
        results = list(client.infer_stream(tiny_input(seed) for seed in range(3)))
    for seed, result in enumerate(results):
        np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(seed)), atol=1e-5, rtol=0)
    other = build_bundle(tmp_path / "other", seed=1)
    with EdgeClient(other, ray_address, guarded_config()) as client:
        with pytest.raises(
            BundleMismatchError, match="FAILED_PRECONDITION: request .*: model 'tiny': the client's head"
        ):
            list(client.infer_stream([tiny_input()]))


@pytest.mark.timeout(180)
def test_ray_serve_refuses_a_head_of_another_bundle_with_its_status(tmp_path: Path, ray_address: str) -> None:
    other = build_bundle(tmp_path / "other", seed=1)
    with EdgeClient(other, ray_address, guarded_config(retry=NO_RETRY)) as client:
        with pytest.raises(
            BundleMismatchError, match="FAILED_PRECONDITION: model 'tiny': the client's head has bundle_hash"
        ):
            client.infer(tiny_input())


@pytest.mark.timeout(180)
def test_ray_serve_lists_the_served_bundle(bundle: Bundle, ray_address: str) -> None:
    with grpc.insecure_channel(ray_address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        metadata = (*TO_GUARDED, ("authorization", f"Bearer {TOKEN}"))
        listed = stub.ListModels(pb.ListModelsRequest(), timeout=60, metadata=metadata)
    assert [(b.model_id, b.bundle_hash) for b in listed.bundles] == [("tiny", bundle.manifest.bundle_hash)]


@pytest.mark.timeout(180)
def test_ray_serve_routes_only_calls_that_name_their_application(bundle: Bundle, ray_address: str) -> None:
    with EdgeClient(bundle, ray_address, EdgeConfig(timeout_s=60, token=TOKEN, retry=NO_RETRY)) as client:
        with pytest.raises(UnknownModelError, match="NOT_FOUND: Application metadata not set"):
            client.infer(tiny_input())


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing credentials: send metadata 'authorization: Bearer <token>'"),
        ("Basic abc", "malformed credentials: expected one 'authorization: Bearer <token>'"),
        ("Bearer not-a-token", "invalid token: not one this server accepts"),
    ],
    ids=["missing", "malformed", "invalid"],
)
def test_ray_serve_replicas_refuse_calls_without_a_good_token(
    bundle: Bundle, ray_address: str, authorization: str | None, message: str
) -> None:
    metadata = TO_GUARDED + ((("authorization", authorization),) if authorization else ())
    with grpc.insecure_channel(ray_address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        calls = {
            "Infer": lambda: stub.Infer(pb.InferRequest(), timeout=60, metadata=metadata),
            "InferStream": lambda: list(stub.InferStream(iter([pb.InferRequest()]), timeout=60, metadata=metadata)),
            "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=60, metadata=metadata),
            "FetchBundleFile": lambda: list(
                stub.FetchBundleFile(pb.FetchBundleFileRequest(), timeout=60, metadata=metadata)
            ),
        }
        for method, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, message), method
            assert "not-a-token" not in caught.value.details()


@pytest.mark.timeout(180)
def test_ray_serve_answers_malformed_bytes_invalid_argument(ray_address: str) -> None:
    metadata = (*TO_GUARDED, ("authorization", f"Bearer {TOKEN}"))
    with grpc.insecure_channel(ray_address) as channel:
        infer = channel.unary_unary("/splitinfer.v1.SplitInference/Infer")
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff\xff", timeout=60, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "3 bytes that are not a valid splitinfer.v1.InferRequest" in caught.value.details()


@pytest.mark.timeout(180)
def test_ray_serve_health_from_a_replica_and_the_proxy(ray_address: str) -> None:
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    with grpc.insecure_channel(ray_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # Open to probes, which carry no token; answered by a replica of the application named.
        for service in ("", "splitinfer.v1.SplitInference"):
            request = health_pb2.HealthCheckRequest(service=service)
            answer = health.Check(request, timeout=60, metadata=TO_GUARDED)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nosuch"), timeout=60, metadata=TO_GUARDED)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "unknown service 'nosuch'" in caught.value.details()
        # Watch is not routed to replicas (it would hold one open): gRPC's own answer.
        with pytest.raises(grpc.RpcError) as caught:
            next(health.Watch(health_pb2.HealthCheckRequest(), timeout=60, metadata=TO_GUARDED))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The proxy's own, which needs no application.
        ray_api = serve_pb2_grpc.RayServeAPIServiceStub(channel)
        assert ray_api.Healthz(serve_pb2.HealthzRequest(), timeout=60).message == "success"
        listed = ray_api.ListApplications(serve_pb2.ListApplicationsRequest(), timeout=60)
        assert sorted(listed.application_names) == sorted([GUARDED, SCALED])


@pytest.mark.timeout(180)
def test_ray_serve_sends_a_bundles_files_for_updates(bundle: Bundle, ray_address: str) -> None:
    metadata = (*TO_GUARDED, ("authorization", f"Bearer {TOKEN}"))
    manifest = bundle.manifest
    with grpc.insecure_channel(ray_address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        request = pb.FetchBundleFileRequest(
            model_id=manifest.model_id, bundle_hash=manifest.bundle_hash, file="manifest.json"
        )
        chunks = list(stub.FetchBundleFile(request, timeout=60, metadata=metadata))
        assert b"".join(c.data for c in chunks) == (bundle.path / "manifest.json").read_bytes()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.FetchBundleFile(pb.FetchBundleFileRequest(model_id="nosuch"), timeout=60, metadata=metadata))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nosuch'" in caught.value.details()


@pytest.mark.timeout(180)
def test_ray_serve_updates_a_device_over_the_air(bundle: Bundle, ray_address: str, tmp_path: Path) -> None:
    config = EdgeConfig(timeout_s=60, metadata=(("application", SCALED),), update_cache=tmp_path / "updates")
    with EdgeClient(bundle, ray_address, config) as client:
        assert client.update()  # ListModels advertises version 1; its files come by FetchBundleFile
        assert client.bundle.manifest.version == 1
        result = client.infer(tiny_input())
    np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(), NEWER_SEED), atol=1e-5, rtol=0)


@pytest.mark.timeout(180)
def test_run_command_sends_the_application_and_token(bundle: Bundle, ray_address: str, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", tiny_input())
    stdout = assert_ok(
        cli(
            "run", bundle.path, "--server", ray_address, "--input", tmp_path / "x.npy",
            "--metadata", f"application={GUARDED}", "--token", TOKEN, "--timeout", "60s",
        )
    )  # fmt: skip
    assert f"tiny via {ray_address}" in stdout and "top classes: " in stdout


def _replicas() -> dict[str, int]:
    """The autoscaled application's replicas by state (RUNNING, STARTING, STOPPING...)."""
    from ray import serve

    return dict(serve.status().applications[SCALED].deployments["TailDeployment"].replica_states)


def _wait_for(condition, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s:g} s: replicas {_replicas()}")
        time.sleep(0.25)
    return time.monotonic() - start


@pytest.mark.timeout(240)
def test_ray_serve_scales_out_under_load_and_back_in_after(bundle: Bundle, ray_address: str) -> None:
    """5 clients sending back to back hold ~5 requests, over the target of 2 per replica: Serve adds
    the second replica. Then only the sixth, sending every 0.2 s, holds under 1, and Serve removes
    it again while that client goes on. Not one request fails, none retried."""
    config = EdgeConfig(timeout_s=60, metadata=(("application", SCALED),), retry=NO_RETRY)
    heavy_done, all_done = threading.Event(), threading.Event()
    answered: list[int] = []
    errors: list[Exception] = []

    def send(client: EdgeClient, heavy: bool) -> None:
        count = 0
        while not (all_done.is_set() or (heavy and heavy_done.is_set())):
            try:
                client.infer(tiny_input(count % 4))
                count += 1
            except SplitInferError as err:
                errors.append(err)
            if not heavy:
                time.sleep(0.2)
        answered.append(count)

    assert _replicas() == {"RUNNING": 1}
    clients = [EdgeClient(bundle, ray_address, config) for _ in range(6)]
    try:
        threads = [threading.Thread(target=send, args=(c, i > 0)) for i, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        out_s = _wait_for(lambda: _replicas().get("RUNNING") == 2, 90, "a second replica under load")
        time.sleep(2)  # both replicas answer for a while
        heavy_done.set()
        in_s = _wait_for(lambda: _replicas() == {"RUNNING": 1}, 90, "back to one replica after the load")
        time.sleep(1)  # the light client goes on against the one left
        all_done.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        all_done.set()
        for client in clients:
            client.close()
    print(f"scaled out in {out_s:.1f} s, back in {in_s:.1f} s after the load; answered {answered}")
    assert errors == [] and len(answered) == 6 and all(count > 0 for count in answered)


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "the Ray Serve app needs `bundles`"),
        ({"bundles": "b", "max_batch": "0"}, "max_batch='0' is not an integer between 1 and 4096"),
        ({"bundles": "b", "threads": "two"}, "threads='two' is not an integer between 1 and 1024"),
        ({"bundles": "b", "window_s": "nan"}, "window_s='nan' is not a number between 0 and 10"),
        ({"bundles": "b", "tokens": 3}, "tokens=3 is not a path"),
    ],
)
def test_ray_serve_app_refuses_bad_arguments_by_name(args: dict, message: str) -> None:
    from cloud_runtime.ray_serve import app

    with pytest.raises(SplitInferError, match=message):
        app(args)


def test_the_deploy_config_passes_rays_own_schema_and_builds_the_app() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from cloud_runtime.ray_serve import GRPC_SERVICER_FUNCTIONS, app

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text()))
    assert config.grpc_options.grpc_servicer_functions == GRPC_SERVICER_FUNCTIONS
    (application,) = config.applications
    assert application.import_path == "cloud_runtime.ray_serve:app"
    app(application.args)
