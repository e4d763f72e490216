"""Heads updated over the air (edge_runtime.updates, FetchBundleFile), with a real server on
loopback and real clients in threads.

- Rollover: a server serves version 1 of a model; 8 devices (each its own EdgeClient, checking for
  updates every 50 ms, and its own cache directory) send requests in a loop; version 2 is
  published to the running server mid-run. Every request is answered (0 fail), each answer is
  exactly the unsplit model of version 1 or of version 2 (never a head of one with the tail of
  the other), a device never goes back to version 1 once it answered with version 2, and every
  device ends on version 2. The server still answers a request naming version 1 afterwards.
- Tampered versions on the server's disk (the head's bytes, a manifest field, a bad signature
  with trust keys) are refused by the device with an error that says what failed, and the device
  goes on answering with version 1; nothing of the refused version is left in its cache.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import build_bundle, reference_output, request_for, tiny_input
from cli_runs import assert_ok, cli

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import start_server_process
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.updates import UpdateRefusedError
from protos.bundle import MANIFEST, Bundle, load_bundle, write_manifest
from protos.errors import SplitInferError
from protos.signing import load_signing_key, sign_bundle, write_key_pair
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

CLIENTS = 8
# Before v2 is published, and after a device switched: requests each device sends.
REQUESTS_BEFORE = 10
REQUESTS_AFTER = 10
# v1 is the tiny model's weights with seed 0, v2 with seed 1: their answers differ.
SEEDS = {1: 0, 2: 1}


def _versions(tmp_path: Path) -> tuple[Bundle, Bundle]:
    return (
        build_bundle(tmp_path / "v1", version=1, seed=SEEDS[1]),
        build_bundle(tmp_path / "v2", version=2, seed=SEEDS[2]),
    )


def _answer_version(outputs: np.ndarray, x: np.ndarray) -> int:
    """Which version's unsplit model `outputs` is, for input `x` (0: neither)."""
    for version, seed in SEEDS.items():
        if np.allclose(outputs, reference_output(x, seed), atol=1e-5):
            return version
    return 0


def test_eight_devices_roll_from_v1_to_v2_without_a_failed_request(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    x = tiny_input()
    failures: list[BaseException] = []
    answered: dict[int, list[int]] = {i: [] for i in range(CLIENTS)}
    ended_on: dict[int, int] = {}
    published = threading.Event()

    def device(index: int, address: str) -> None:
        config = EdgeConfig(update_cache=tmp_path / f"cache-{index}", update_interval_s=0.05)
        try:
            with EdgeClient(v1.path, address, config) as client:
                after = 0
                while after < REQUESTS_AFTER:
                    answered[index].append(_answer_version(client.infer(x).outputs["logits"], x))
                    if published.is_set() and answered[index][-1] == 2:
                        after += 1
                    if len(answered[index]) > 5000:
                        raise AssertionError(f"device {index} is still on version 1 after 5000 requests")
                ended_on[index] = client.bundle.manifest.version
                assert client.update_error is None, client.update_error
        except BaseException as err:
            failures.append(err)

    with serve(ServerConfig([v1.path], threads=1)) as running:
        threads = [threading.Thread(target=device, args=(i, running.address)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(len(a) for a in answered.values()) < REQUESTS_BEFORE and not failures:
            assert time.monotonic() < deadline, "the devices did not start answering"
            time.sleep(0.01)
        running.tails.publish(load_bundle(v2.path))
        published.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures[0]
        # Devices may still be on v1: the server answers it as before.
        stub = pb_grpc.SplitInferenceStub(grpc.insecure_channel(running.address))
        reply = stub.Infer(request_for(v1, x), timeout=10)
        assert _answer_version(np.frombuffer(reply.outputs[0].data, np.float32).reshape(1, 4), x) == 1

    for index, versions in answered.items():
        assert 0 not in versions, f"device {index} got an answer of neither version: {versions}"
        first_v2 = versions.index(2)
        assert first_v2 >= REQUESTS_BEFORE
        assert set(versions[first_v2:]) == {2}, f"device {index} went back to version 1: {versions}"
    assert ended_on == dict.fromkeys(range(CLIENTS), 2)
    print(
        f"\n{sum(map(len, answered.values()))} requests, 0 failed; switched after {[a.index(2) for a in answered.values()]}"
    )


def _tamper_head(bundle: Path) -> str:
    head = bundle / "head.onnx"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    return "head.onnx does not match the sha256"


def _tamper_manifest(bundle: Path) -> str:
    data = json.loads((bundle / MANIFEST).read_text())
    data["preprocess"]["mean"] = [0.0, 0.0, 0.0]
    (bundle / MANIFEST).write_text(json.dumps(data))
    return "the manifest was edited after export"


def _rehash_manifest(bundle: Path) -> str:
    """A manifest edited and given the hash of what it now says: whole, but not what was advertised."""
    write_manifest(bundle, dataclasses.replace(load_bundle(bundle).manifest, labels=("a", "b", "c", "d")))
    return "not the advertised model"


@pytest.mark.parametrize(
    "tamper", [_tamper_head, _tamper_manifest, _rehash_manifest], ids=["head bytes", "manifest field", "re-hashed"]
)
def test_a_tampered_v2_is_refused_and_v1_goes_on(tmp_path: Path, tamper) -> None:
    v1, v2 = _versions(tmp_path)
    x = tiny_input()
    with serve(ServerConfig([v1.path, v2.path], threads=1)) as running:
        # On the server's disk after it loaded v2: what a compromised host or a bad copy serves.
        expected = tamper(v2.path)
        cache = tmp_path / "cache"
        with EdgeClient(v1.path, running.address, EdgeConfig(update_cache=cache)) as client:
            with pytest.raises(UpdateRefusedError, match=expected) as refused:
                client.update()
            assert "version 1 stays in use" in str(refused.value)
            assert client.bundle.manifest.version == 1
            assert _answer_version(client.infer(x).outputs["logits"], x) == 1
        assert list(cache.iterdir()) == []


def test_with_trust_keys_only_a_version_signed_by_one_is_taken(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    _, trusted = write_key_pair(tmp_path / "keys", "trusted")
    other, _ = write_key_pair(tmp_path / "keys", "other")
    sign_bundle(v1.path, load_signing_key(tmp_path / "keys" / "trusted.key"))
    x = tiny_input()
    config = EdgeConfig(update_cache=tmp_path / "cache", trust_keys=(trusted,))
    with (
        serve(ServerConfig([v1.path, v2.path], threads=1)) as running,
        EdgeClient(v1.path, running.address, config) as client,
    ):
        with pytest.raises(UpdateRefusedError, match="is not signed"):
            client.update()
        sign_bundle(v2.path, load_signing_key(other))
        with pytest.raises(UpdateRefusedError, match="which is not a trusted key"):
            client.update()
        sign_bundle(v2.path, load_signing_key(tmp_path / "keys" / "trusted.key"))
        signature = json.loads((v2.path / "manifest.sig").read_text())
        signature["signature"] = signature["signature"][:-8] + "AAAAAAA="
        (v2.path / "manifest.sig").write_text(json.dumps(signature))
        with pytest.raises(UpdateRefusedError, match="does not verify with key"):
            client.update()
        assert client.bundle.manifest.version == 1
        assert _answer_version(client.infer(x).outputs["logits"], x) == 1
        sign_bundle(v2.path, load_signing_key(tmp_path / "keys" / "trusted.key"))
        assert client.update()
        assert client.bundle.manifest.version == 2
        assert _answer_version(client.infer(x).outputs["logits"], x) == 2


def test_a_later_client_starts_on_the_cached_version_and_refuses_a_tampered_cache(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    x = tiny_input()
    cache = tmp_path / "cache"
    with serve(ServerConfig([v1.path, v2.path], threads=1)) as running:
        with EdgeClient(v1.path, running.address, EdgeConfig(update_cache=cache)) as client:
            assert client.update()
            assert not client.update()  # the newest already
            cached = client.bundle.path
        assert cached.parent == cache and cached.name == v2.manifest.bundle_hash
        assert not (cached / "tail.onnx").exists()  # the device fetched what it runs
        with EdgeClient(v1.path, running.address, EdgeConfig(update_cache=cache)) as client:
            assert client.bundle.path == cached
            assert _answer_version(client.infer(x).outputs["logits"], x) == 2
        _tamper_head(cached)
        with EdgeClient(v1.path, running.address, EdgeConfig(update_cache=cache)) as client:
            assert client.bundle.manifest.version == 1
            assert not cached.exists()
            assert _answer_version(client.infer(x).outputs["logits"], x) == 1


def test_an_older_or_unversioned_bundle_is_never_an_update(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    unversioned = build_bundle(tmp_path / "v0", seed=2)
    with serve(ServerConfig([unversioned.path, v1.path], threads=1)) as running:
        with EdgeClient(v2.path, running.address, EdgeConfig(update_cache=tmp_path / "cache")) as client:
            assert not client.update()
            assert client.bundle.path == v2.path
    shutil.rmtree(tmp_path / "cache")


def test_fallback_fetches_the_tail_too(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    with serve(ServerConfig([v1.path, v2.path], threads=1)) as running:
        config = EdgeConfig(update_cache=tmp_path / "cache", fallback=True)
        with EdgeClient(v1.path, running.address, config) as client:
            assert client.update()
            assert (client.bundle.path / "tail.onnx").is_file()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(update_interval_s=1.0), "needs update_cache"),
        (dict(update_interval_s=-1.0, update_cache="c"), "update_interval_s -1.0"),
        (dict(update_cache=3), "update_cache 3 is not a path"),
    ],
)
def test_update_options_are_checked(config: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        EdgeConfig(**config)


def test_updates_need_a_single_cut_bundle_served(tmp_path: Path) -> None:
    edge_only = build_bundle(tmp_path / "edge", placement="edge", version=1)
    with pytest.raises(SplitInferError, match="runs without a server"):
        EdgeClient(edge_only.path, None, EdgeConfig(update_cache=tmp_path / "cache"))
    client = EdgeClient(build_bundle(tmp_path / "v1").path, "127.0.0.1:1")
    with client, pytest.raises(SplitInferError, match="takes no updates"):
        client.update()


def test_run_updates_before_its_request_and_says_so(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, tiny_input())
    cache = tmp_path / "cache"
    with serve(ServerConfig([v1.path], threads=1)) as running:
        args = ("run", v1.path, "--server", running.address, "--input", x, "--update-cache", cache)
        assert "bundle up to date: version 1" in assert_ok(cli(*args))
        running.tails.publish(v2)
        stdout = assert_ok(cli(*args))
        assert f"bundle updated to version 2 ({v2.manifest.bundle_hash[:12]}, {cache / v2.manifest.bundle_hash})" in (
            stdout.replace("\n", "")
        )
        assert "bundle up to date: version 2" in assert_ok(cli(*args))
    v3 = build_bundle(tmp_path / "v3", version=3, seed=2)
    _tamper_head(v3.path)
    with serve(ServerConfig([v1.path, v2.path, load_bundle(v3.path, verify=False)], threads=1)) as running:
        stdout = assert_ok(cli("run", v1.path, "--server", running.address, "--input", x, "--update-cache", cache))
        assert "to version 3" in stdout and "refused" in stdout and "head.onnx does not match the sha256" in stdout
        assert "version 2 stays in use" in stdout.replace("\n", " ")


def test_sighup_serves_the_new_version_in_the_bundle_directory(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    current = tmp_path / "current"
    current.symlink_to(v1.path)
    x = tiny_input()
    with (
        start_server_process(ServerConfig([current], threads=1)) as process,
        EdgeClient(v1.path, process.address, EdgeConfig(update_cache=tmp_path / "cache")) as client,
    ):
        assert not client.update()
        current.unlink()
        current.symlink_to(v2.path)
        process.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not client.update():
            assert time.monotonic() < deadline, list(process.log_tail)
            assert _answer_version(client.infer(x).outputs["logits"], x) == 1
            time.sleep(0.05)
        assert _answer_version(client.infer(x).outputs["logits"], x) == 2
        # The server writes its log on a timer (cloud_runtime.logs): the line may follow the switch.
        while not any("1 new version(s) published" in line for line in process.log_tail):
            assert time.monotonic() < deadline, list(process.log_tail)
            time.sleep(0.05)


def test_a_cache_shared_with_another_models_client_keeps_both(tmp_path: Path) -> None:
    v1, v2 = _versions(tmp_path)
    other = build_bundle(tmp_path / "other", model_id="other", version=1, seed=3)
    cache = tmp_path / "cache"
    with serve(ServerConfig([v1.path, v2.path, other.path], threads=1)) as running:
        with EdgeClient(v1.path, running.address, EdgeConfig(update_cache=cache)) as client:
            assert client.update()
        with EdgeClient(other.path, running.address, EdgeConfig(update_cache=cache)) as client:
            assert client.bundle.path == other.path and not client.update()
        assert [p.name for p in cache.iterdir()] == [v2.manifest.bundle_hash]
