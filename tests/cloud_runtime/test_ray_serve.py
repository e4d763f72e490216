"""The tails on Ray Serve: a local Ray cluster, Serve with its gRPC proxy, the tail deployment, and
real requests from the unchanged edge client through it. Skipped where Ray is not installed (the
`ray` extra: `make test` installs it; `dev` does not, since Ray is ~335 MB and starts in ~20 s)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from batched_bundles import batchable_bundle
from bundles import build_bundle, reference_output, tiny_input
from ports import free_port

from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY
from protos.bundle import Bundle
from protos.errors import BundleMismatchError, SplitInferError
from protos.signing import load_signing_key, sign_bundle, write_key_pair
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

# Found without importing it: importing Ray changes every log record of the process (it adds a
# timestamp attribute), which the other tests of this session should not see before it runs.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="Ray is not installed: pip install '.[ray]' to run the Ray Serve test",
    ),
]


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return batchable_bundle(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def trust_key(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The public key of a fresh key pair whose private half signed `bundle`."""
    key, pub = write_key_pair(tmp_path_factory.mktemp("keys"))
    sign_bundle(bundle.path, load_signing_key(key))
    return pub


@pytest.fixture(scope="module")
def ray_address(bundle: Bundle, trust_key: Path) -> Iterator[str]:
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from cloud_runtime.ray_serve import GRPC_SERVICER_FUNCTIONS, app

    grpc_port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(
            grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS),
            http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
        )
        # Signed, and the replicas told to trust only its key: they verify it as they load it.
        args = {"bundles": str(bundle.path), "threads": 1, "window_s": 0.05, "trust_keys": [str(trust_key)]}
        serve.run(app(args), name="splitinfer")
        yield f"127.0.0.1:{grpc_port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.timeout(180)
def test_ray_serve_answers_the_edge_client_in_batches(bundle: Bundle, ray_address: str) -> None:
    with EdgeClient(bundle, ray_address, EdgeConfig(timeout_s=60)) as client:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda seed: client.infer(tiny_input(seed)), range(4)))
    # Requests of one batch share its tail call, and its time.
    assert len({result.timing.tail_ms for result in results}) < len(results)
    for seed, result in enumerate(results):
        assert not result.fallback and result.bytes_sent > 0
        np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(seed)), atol=1e-5, rtol=0)


@pytest.mark.timeout(180)
def test_ray_serve_refuses_a_head_of_another_bundle_with_its_status(tmp_path: Path, ray_address: str) -> None:
    other = build_bundle(tmp_path / "other", seed=1)
    with EdgeClient(other, ray_address, EdgeConfig(timeout_s=60, retry=NO_RETRY)) as client:
        with pytest.raises(
            BundleMismatchError, match="FAILED_PRECONDITION: model 'tiny': the client's head has bundle_hash"
        ):
            client.infer(tiny_input())


@pytest.mark.timeout(180)
def test_ray_serve_lists_the_served_bundle(bundle: Bundle, ray_address: str) -> None:
    with grpc.insecure_channel(ray_address) as channel:
        listed = pb_grpc.SplitInferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=60)
    assert [(b.model_id, b.bundle_hash) for b in listed.bundles] == [("tiny", bundle.manifest.bundle_hash)]


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "the Ray Serve app needs `bundles`"),
        ({"bundles": "b", "max_batch": "0"}, "max_batch='0' is not an integer between 1 and 4096"),
        ({"bundles": "b", "threads": "two"}, "threads='two' is not an integer between 1 and 1024"),
        ({"bundles": "b", "window_s": "nan"}, "window_s='nan' is not a number between 0 and 10"),
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
