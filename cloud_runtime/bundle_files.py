"""The files of a served bundle that a device may fetch (FetchBundleFile): how a device gets a
version of the bundle it does not have, over the same connection, tokens and TLS as its requests.

A device may fetch a served bundle's manifest.json, its manifest.sig (when it is signed) and the
files the manifest names: the head, and the tail (the device's fallback). Nothing else of the
server's disk is reachable: the name must be one of those, never a path. The files are read from
the bundle directory when asked for, in chunks of FILE_CHUNK_BYTES; the device verifies what it
received against the manifest (and the signature) before it runs any of it, so a file changed on
the server's disk is refused there, not here. A multi-cut bundle's cuts are not fetchable: their
manifest is the whole bundle's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc

from protos.bundle import MANIFEST, SEGMENTED_HEAD, Bundle
from protos.errors import SplitInferError
from protos.signing import SIGNATURE_FILE
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.transport import FILE_CHUNK_BYTES


class BundleFileNotFoundError(SplitInferError):
    """The file asked for is not one this bundle has here."""

    status_code = grpc.StatusCode.NOT_FOUND


class BundleFileOffsetError(SplitInferError):
    """The offset asked for is not inside the file."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class NotFetchableError(SplitInferError):
    """The bundle is served, but not as files a device can fetch (a multi-cut bundle's cut)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


def fetchable_files(bundle: Bundle) -> tuple[str, ...]:
    """The names a device may ask for of `bundle`."""
    manifest = bundle.manifest
    names = [MANIFEST, SIGNATURE_FILE]
    if manifest.has_head:
        names.append(manifest.head_file)
    if manifest.has_tail:
        names.append(manifest.tail_file)
    return tuple(names)


def file_chunks(bundle: Bundle, name: str, offset: int = 0) -> Iterator[pb.FileChunk]:
    """`name` of `bundle` from byte `offset`, in chunks; raises before the first chunk when the
    name, the file or the offset is not there."""
    manifest = bundle.manifest
    where = f"model {manifest.model_id!r} bundle {manifest.bundle_hash[:12]}"
    if manifest.head_file == SEGMENTED_HEAD:
        raise NotFetchableError(
            f"{where} is a cut of a multi-cut bundle: over the air a device fetches single-cut bundles only"
        )
    names = fetchable_files(bundle)
    if name not in names:
        raise SplitInferError(f"{where}: file {name!r} is not one a device may fetch; it may fetch {list(names)}")
    try:
        file = open(bundle.path / name, "rb")  # noqa: SIM115 (closed by the generator below)
    except FileNotFoundError:
        raise BundleFileNotFoundError(f"{where}: this server holds no {name}") from None
    except OSError as err:
        raise SplitInferError(f"{where}: cannot read {name}: {err.strerror or err}") from err
    size = os.fstat(file.fileno()).st_size
    if not 0 <= offset <= size:
        file.close()
        raise BundleFileOffsetError(f"{where}: offset {offset} is outside {name}, which has {size} bytes")
    return _chunks(file, offset, size)


def _chunks(file, offset: int, size: int) -> Iterator[pb.FileChunk]:
    with file:
        file.seek(offset)
        while True:
            data = file.read(FILE_CHUNK_BYTES)
            yield pb.FileChunk(offset=offset, data=data, size=size)
            offset += len(data)
            if offset >= size or not data:
                return
