"""Over-the-air updates of the device's bundle: a newer version fetched from the server, verified
before anything of it runs, kept in a cache directory on the device.

The server advertises, per model, its newest version (ListModels: the served bundle with the
highest manifest `version`, marked `newest`). `BundleUpdates.newer` asks for it and, when it is
higher than the version in use, fetches its manifest.json, manifest.sig (when the server has one)
and head file, and its tail when the device runs the tail itself (fallback, racing), with
FetchBundleFile into CACHE/.fetch-*, then verifies them there:

- with trust keys, the signature over the manifest by one of them (protos.signing), first;
- the manifest's own bundle_hash, and that it is the bundle asked for: the model, the
  bundle_hash and the version the server advertised, a version above the one in use (an older
  bundle, signed or not, is never installed) and the same inputs as the version in use (the
  application feeds those);
- every file against the manifest's sha256.

Only then is the directory renamed to CACHE/<bundle_hash>, where a later client finds it
(`newest_cached`, verified again: the device's storage is not trusted more than the network).
Anything that does not verify is removed and refused with `UpdateRefusedError`, which says what
failed; the version in use is left as it was. The client switches between versions
(edge_runtime.client); this module never touches one in use.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from edge_runtime.transport import Transport
from protos.bundle import MANIFEST, Bundle, load_bundle
from protos.errors import BundleError, SplitInferError
from protos.signing import SIGNATURE_FILE, TrustedKey, verify_bundle_signature
from protos.splitinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

# How long one file's fetch may take: a head of tens of MB over a slow downlink, not a request's
# deadline. An interrupted fetch resumes from the bytes it has (FetchBundleFileRequest.offset).
FETCH_TIMEOUT_S = 600.0
_FETCH_ATTEMPTS = 3
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# ONNX files cannot be larger (protobuf's limit): a server announcing more would only fill the disk.
MAX_FILE_BYTES = 2**31
# A version that was refused is not fetched again by the periodic check for this long.
REFUSED_RETRY_S = 300.0
_STAGING_PREFIX = ".fetch-"


class UpdateRefusedError(BundleError):
    """A newer version fetched from the server did not verify: it is not used, and the version in
    use goes on serving."""


@dataclass(frozen=True)
class Offer:
    """The newest version of a model a server advertises."""

    model_id: str
    bundle_hash: str
    version: int


class BundleUpdates:
    """Fetches and verifies newer versions of a model's bundle over `transport` into `cache_dir`.
    `trusted`: keys one of which must have signed a version (empty: signatures not required);
    `with_tail`: fetch the tail too (the device runs it: fallback, racing)."""

    def __init__(
        self, transport: Transport, cache_dir: str | Path, trusted: tuple[TrustedKey, ...] = (), *, with_tail: bool
    ) -> None:
        self.transport = transport
        self.cache_dir = Path(cache_dir)
        self.trusted = trusted
        self.with_tail = with_tail
        self._refused: dict[str, tuple[float, UpdateRefusedError]] = {}
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SplitInferError(
                f"update cache {str(self.cache_dir)!r}: cannot create it: {err.strerror or err}"
            ) from err

    def offer(self, model_id: str) -> Offer | None:
        """The server's newest version of `model_id`; None when it advertises none."""
        try:
            listed = self.transport.list_models()
        except grpc.RpcError as err:
            raise self.transport.error(err.code(), err.details()) from err
        for served in listed.bundles:
            if served.model_id == model_id and served.newest:
                return Offer(served.model_id, served.bundle_hash, int(served.version))
        return None

    def newer(self, current: Bundle, *, retry_refused: bool = True) -> Bundle | None:
        """The server's newest version when it is newer than `current`, fetched (or found in the
        cache) and verified; None when `current` is the newest. Raises UpdateRefusedError when it
        does not verify; `retry_refused=False` raises a recent refusal again without fetching."""
        offer = self.offer(current.manifest.model_id)
        if offer is None or offer.version <= current.manifest.version:
            return None
        refused = self._refused.get(offer.bundle_hash)
        if refused is not None and not retry_refused and time.monotonic() - refused[0] < REFUSED_RETRY_S:
            raise refused[1]
        target = self.cache_dir / offer.bundle_hash
        if target.is_dir():
            try:
                return self._verified(target, offer, current)
            except BundleError as err:
                log.warning("cached %s does not verify, fetched again: %s", target, err)
                shutil.rmtree(target, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.cache_dir))
        try:
            self._fetch(offer, staging)
            bundle = self._verified(staging, offer, current)
        except BaseException as err:
            shutil.rmtree(staging, ignore_errors=True)
            if not isinstance(err, BundleError):
                raise
            refusal = UpdateRefusedError(
                f"update of model {offer.model_id!r} to version {offer.version} (bundle {offer.bundle_hash[:12]}) "
                f"from server {self.transport.server} refused: {err}; version {current.manifest.version} stays in use"
            )
            self._refused[offer.bundle_hash] = (time.monotonic(), refusal)
            raise refusal from err
        self._refused.pop(offer.bundle_hash, None)
        try:
            staging.rename(target)
        except OSError:
            # Another client sharing the cache put the same version there first: that copy, verified.
            shutil.rmtree(staging, ignore_errors=True)
            return self._verified(target, offer, current)
        return Bundle(target, bundle.manifest)

    def refuse(self, bundle: Bundle, reason: str) -> UpdateRefusedError:
        """A version that verified but could not be loaded (its head does not run): removed from
        the cache, and the error to raise."""
        manifest = bundle.manifest
        shutil.rmtree(bundle.path, ignore_errors=True)
        refusal = UpdateRefusedError(
            f"update of model {manifest.model_id!r} to version {manifest.version} (bundle {manifest.bundle_hash[:12]}) "
            f"refused: {reason}"
        )
        self._refused[manifest.bundle_hash] = (time.monotonic(), refusal)
        return refusal

    def newest_cached(self, current: Bundle) -> Bundle | None:
        """The highest version of `current`'s model in the cache above `current`'s, verified again;
        a cached version that no longer verifies is removed (and logged)."""
        found = []
        for path in self.cache_dir.iterdir():
            if path.name.startswith(_STAGING_PREFIX) or not (path / MANIFEST).is_file():
                continue
            try:
                listed = load_bundle(path, verify=False).manifest
                if listed.model_id != current.manifest.model_id or listed.version <= current.manifest.version:
                    continue  # another model's (a cache shared by clients), or not newer: not ours to judge
                bundle = self._verified(path, None, current)
            except BundleError as err:
                log.warning("cached %s does not verify, removed: %s", path, err)
                shutil.rmtree(path, ignore_errors=True)
                continue
            found.append(bundle)
        return max(found, key=lambda b: b.manifest.version, default=None)

    def _fetch(self, offer: Offer, out: Path) -> None:
        """The version's files into `out`, the head named by its manifest (fetched first)."""
        self._fetch_file(offer, MANIFEST, out)
        if not self._fetch_file(offer, SIGNATURE_FILE, out, optional=True):
            log.info(
                "server %s holds no %s for bundle %s", self.transport.server, SIGNATURE_FILE, offer.bundle_hash[:12]
            )
        manifest = load_bundle(out, verify=False).manifest
        if manifest.has_head:
            self._fetch_file(offer, manifest.head_file, out)
        if manifest.has_tail and self.with_tail:
            self._fetch_file(offer, manifest.tail_file, out)

    def _fetch_file(self, offer: Offer, name: str, out: Path, *, optional: bool = False) -> bool:
        """Writes `name` into `out`; False when `optional` and the server holds none."""
        path = out / name
        with open(path, "wb") as file:
            for attempt in range(1, _FETCH_ATTEMPTS + 1):
                request = pb.FetchBundleFileRequest(
                    model_id=offer.model_id, bundle_hash=offer.bundle_hash, file=name, offset=file.tell()
                )
                try:
                    if _receive(self.transport.fetch_bundle_file(request, FETCH_TIMEOUT_S), file, name):
                        return True
                except grpc.RpcError as err:
                    if optional and err.code() == grpc.StatusCode.NOT_FOUND:
                        file.close()
                        path.unlink()
                        return False
                    if err.code() not in _RESUMABLE or attempt == _FETCH_ATTEMPTS:
                        raise self.transport.error(err.code(), f"fetching {name}: {err.details()}", attempt) from err
                    log.info("fetching %s stopped at byte %d (%s); resuming", name, file.tell(), err.code().name)
        return True

    def _verified(self, path: Path, offer: Offer | None, current: Bundle) -> Bundle:
        """The bundle at `path` when it verifies as a newer version of `current` (and as `offer`,
        when given); BundleError saying what does not, otherwise."""
        if self.trusted:
            # Before the manifest is read: the signature vouches for it, and it for the files.
            verify_bundle_signature(path, self.trusted)
        bundle = load_bundle(path, need_tail=self.with_tail)
        manifest, in_use = bundle.manifest, current.manifest
        if offer is not None and (manifest.model_id, manifest.bundle_hash, manifest.version) != (
            offer.model_id,
            offer.bundle_hash,
            offer.version,
        ):
            raise BundleError(
                f"the fetched manifest is model {manifest.model_id!r} version {manifest.version} bundle "
                f"{manifest.bundle_hash[:12]}, not the advertised model {offer.model_id!r} version {offer.version} "
                f"bundle {offer.bundle_hash[:12]}"
            )
        if manifest.model_id != in_use.model_id:
            raise BundleError(f"it is of model {manifest.model_id!r}, not {in_use.model_id!r}")
        if manifest.version <= in_use.version:
            raise BundleError(f"its version {manifest.version} is not above the version in use, {in_use.version}")
        if manifest.inputs != in_use.inputs:
            raise BundleError(
                f"its inputs {[(s.name, list(s.shape)) for s in manifest.inputs]} are not those of the version in use "
                f"{[(s.name, list(s.shape)) for s in in_use.inputs]}"
            )
        return bundle


def _receive(chunks, file, name: str) -> bool:
    """Appends a FetchBundleFile stream to `file`; True once the file is whole."""
    size = None
    for chunk in chunks:
        if size is None:
            size = chunk.size
            if not 0 <= size <= MAX_FILE_BYTES:
                raise BundleError(f"the server announces {name} as {size} bytes, beyond {MAX_FILE_BYTES}")
        if chunk.size != size or chunk.offset != file.tell() or chunk.offset + len(chunk.data) > size:
            raise BundleError(
                f"the server sent bytes {chunk.offset}..{chunk.offset + len(chunk.data)} of {name} "
                f"(size {chunk.size}) where byte {file.tell()} of {size} was due"
            )
        file.write(chunk.data)
    if size is None or file.tell() != size:
        raise BundleError(f"the server ended {name} after {file.tell()} of {size} bytes")
    return True


class UpdateChecker:
    """Calls `check` every `interval_s` on a thread of its own until closed; what it raises is
    logged and kept in `last_error` (a refused update included): the device goes on as it was."""

    def __init__(self, check: Callable[[], object], interval_s: float) -> None:
        self._check = check
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.last_error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="edge-update-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._check()
                self.last_error = None
            except Exception as err:
                if str(err) != str(self.last_error):  # once, not at every check while it lasts
                    log.warning("bundle update check failed: %s", err)
                self.last_error = err

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
