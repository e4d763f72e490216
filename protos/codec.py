"""The tensor codec: how an activation becomes the bytes of a `splitinfer.v1.Tensor`, and back.

A Codec is an encoding (raw / fp16 / int8 affine) followed by a compression (none / zstd). Both are
registries, so a new encoding is one class and one `register_encoding` call. Lossy encodings apply
to float32 tensors only; tensors of any other dtype always travel raw (the wire message says so).

Decoding never trusts the sender's sizes: the payload length is derived from the declared shape and
checked exactly, and a zstd frame is read through a bounded reader, so a frame that would inflate
past the expected size (a decompression bomb) is refused after reading one byte too many.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import zstandard

from protos.errors import CodecError
from protos.splitinfer.v1 import inference_pb2 as pb

DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT8: np.dtype("i1"),
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_BOOL: np.dtype("?"),
}
_WIRE_DTYPE = {dtype: wire for wire, dtype in DTYPES.items()}

# A decoded tensor larger than this is refused before any allocation (1 GiB of fp32).
DEFAULT_MAX_ELEMENTS = 1 << 28


def wire_dtype(dtype: np.dtype | str) -> int:
    """The DType enum value of a numpy dtype; CodecError if the wire cannot carry it."""
    dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _WIRE_DTYPE[dtype]
    except KeyError:
        raise CodecError(f"dtype {dtype} cannot be sent; supported: {sorted(map(str, DTYPES.values()))}") from None


def numpy_dtype(wire: int) -> np.dtype:
    try:
        return DTYPES[wire]
    except KeyError:
        raise CodecError(f"unknown dtype enum value {wire}") from None


# ----------------------------------------------------------------------------------- encodings


@dataclass(frozen=True)
class Encoded:
    payload: bytes
    scale: float = 0.0
    zero_point: int = 0


class Encoding(Protocol):
    name: str
    wire: int
    lossy: bool

    def element_size(self, dtype: np.dtype) -> int: ...
    def encode(self, array: np.ndarray) -> Encoded: ...
    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray: ...


_ENCODINGS: dict[str, Encoding] = {}
_ENCODINGS_BY_WIRE: dict[int, Encoding] = {}


def register_encoding(encoding: Encoding) -> Encoding:
    _ENCODINGS[encoding.name] = encoding
    _ENCODINGS_BY_WIRE[encoding.wire] = encoding
    return encoding


class RawEncoding:
    name, wire, lossy = "fp32", pb.ENCODING_RAW, False

    def element_size(self, dtype: np.dtype) -> int:
        return dtype.itemsize

    def encode(self, array: np.ndarray) -> Encoded:
        return Encoded(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())

    def decode(self, payload, shape, dtype, scale, zero_point):
        return np.frombuffer(payload, dtype=dtype).reshape(shape)


class Fp16Encoding:
    name, wire, lossy = "fp16", pb.ENCODING_FP16, True

    def element_size(self, dtype: np.dtype) -> int:
        return 2

    def encode(self, array: np.ndarray) -> Encoded:
        with np.errstate(over="ignore"):
            half = array.astype("<f2")
        if np.isinf(half).any() and (np.isinf(half) & ~np.isinf(array)).any():
            raise CodecError("fp16 encoding cannot carry values beyond ±65504; use fp32 or int8")
        return Encoded(half.tobytes())

    def decode(self, payload, shape, dtype, scale, zero_point):
        return np.frombuffer(payload, dtype="<f2").reshape(shape).astype(dtype)


class Int8AffineEncoding:
    """Per-tensor affine int8. The range always includes 0, so ReLU zeros stay exact zeros (and
    compress well); value = (q - zero_point) * scale."""

    name, wire, lossy = "int8", pb.ENCODING_INT8_AFFINE, True

    def element_size(self, dtype: np.dtype) -> int:
        return 1

    def encode(self, array: np.ndarray) -> Encoded:
        if array.size == 0:
            return Encoded(b"", 1.0, 0)
        lo = min(float(array.min()), 0.0)
        hi = max(float(array.max()), 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise CodecError("int8 encoding cannot carry non-finite values (NaN or inf); use fp32 or fp16")
        scale = (hi - lo) / 255.0 or 1.0
        zero_point = int(np.clip(round(-128.0 - lo / scale), -128, 127))
        q = np.multiply(array.reshape(-1), np.float32(1.0 / scale), dtype=np.float32)
        q += np.float32(zero_point)
        np.rint(q, out=q)
        np.clip(q, -128, 127, out=q)
        return Encoded(q.astype(np.int8).tobytes(), scale, zero_point)

    def decode(self, payload, shape, dtype, scale, zero_point):
        if not (math.isfinite(scale) and scale > 0):
            raise CodecError(f"int8 affine scale must be a finite positive number, got {scale}")
        q = np.frombuffer(payload, dtype=np.int8).reshape(shape)
        out = q.astype(np.float32)
        out -= np.float32(zero_point)
        out *= np.float32(scale)
        return out


for _encoding in (RawEncoding(), Fp16Encoding(), Int8AffineEncoding()):
    register_encoding(_encoding)


# -------------------------------------------------------------------------------- compressions


class Compression(Protocol):
    name: str
    wire: int

    def compress(self, payload: bytes, level: int) -> bytes: ...
    def decompress(self, data: bytes, expected_nbytes: int) -> bytes: ...


_COMPRESSIONS: dict[str, Compression] = {}
_COMPRESSIONS_BY_WIRE: dict[int, Compression] = {}


def register_compression(compression: Compression) -> Compression:
    _COMPRESSIONS[compression.name] = compression
    _COMPRESSIONS_BY_WIRE[compression.wire] = compression
    return compression


class NoCompression:
    name, wire = "none", pb.COMPRESSION_NONE

    def compress(self, payload: bytes, level: int) -> bytes:
        return payload

    def decompress(self, data: bytes, expected_nbytes: int) -> bytes:
        return data


class ZstdCompression:
    name, wire = "zstd", pb.COMPRESSION_ZSTD

    def __init__(self) -> None:
        # zstd contexts are costly to make (a third of a 100 KB encode) and not thread-safe:
        # one per thread and level.
        self._local = threading.local()

    def _compressor(self, level: int) -> zstandard.ZstdCompressor:
        cache = self._local.__dict__.setdefault("compressors", {})
        if level not in cache:
            cache[level] = zstandard.ZstdCompressor(level=level)
        return cache[level]

    def compress(self, payload: bytes, level: int) -> bytes:
        return self._compressor(level).compress(payload)

    def decompress(self, data: bytes, expected_nbytes: int) -> bytes:
        if not hasattr(self._local, "decompressor"):
            self._local.decompressor = zstandard.ZstdDecompressor()
        try:
            # Across frames, so bytes after the first frame are decoded too and counted (or refused
            # as garbage) instead of silently ignored.
            reader = self._local.decompressor.stream_reader(io.BytesIO(data), read_across_frames=True)
            out = reader.read(expected_nbytes + 1)
        except zstandard.ZstdError as err:
            raise CodecError(f"corrupt zstd data: {err}") from err
        if len(out) > expected_nbytes:
            raise CodecError(f"zstd data inflates beyond the {expected_nbytes} bytes its shape allows (decompression bomb?)")
        return out


for _compression in (NoCompression(), ZstdCompression()):
    register_compression(_compression)


# -------------------------------------------------------------------------------------- codec


@dataclass(frozen=True)
class Codec:
    """An encoding then a compression, written `"int8+zstd"`, `"fp16"`, `"fp32+zstd"`, ..."""

    encoding: str = "fp32"
    compression: str = "none"
    level: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in _ENCODINGS:
            raise CodecError(f"unknown encoding {self.encoding!r}; registered: {sorted(_ENCODINGS)}")
        if self.compression not in _COMPRESSIONS:
            raise CodecError(f"unknown compression {self.compression!r}; registered: {sorted(_COMPRESSIONS)}")

    @classmethod
    def parse(cls, text: str) -> Codec:
        encoding, _, compression = text.strip().lower().partition("+")
        return cls(encoding, compression or "none")

    @property
    def name(self) -> str:
        return self.encoding if self.compression == "none" else f"{self.encoding}+{self.compression}"

    @property
    def lossy(self) -> bool:
        return _ENCODINGS[self.encoding].lossy

    def __str__(self) -> str:
        return self.name


def list_codecs() -> list[Codec]:
    """Every registered encoding × compression."""
    return [Codec(e, c) for e in _ENCODINGS for c in _COMPRESSIONS]


def encode(name: str, array: np.ndarray, codec: Codec) -> pb.Tensor:
    """One array → a wire Tensor. Non-float32 arrays travel raw whatever the codec says."""
    array = np.asarray(array)
    dtype_wire = wire_dtype(array.dtype)
    encoding = _ENCODINGS[codec.encoding] if array.dtype == np.float32 else _ENCODINGS["fp32"]
    encoded = encoding.encode(array)
    compression = _COMPRESSIONS[codec.compression]
    return pb.Tensor(
        name=name,
        dtype=dtype_wire,
        shape=array.shape,
        encoding=encoding.wire,
        compression=compression.wire,
        scale=encoded.scale,
        zero_point=encoded.zero_point,
        data=compression.compress(encoded.payload, codec.level),
    )


def decode(tensor: pb.Tensor, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """A wire Tensor → an array of its logical dtype and shape; CodecError names what is wrong."""
    dtype = numpy_dtype(tensor.dtype)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise CodecError(f"tensor {tensor.name!r}: negative dimension in shape {list(shape)}")
    numel = math.prod(shape)
    if numel > max_elements:
        raise CodecError(f"tensor {tensor.name!r}: shape {list(shape)} has {numel} elements, limit {max_elements}")
    encoding = _ENCODINGS_BY_WIRE.get(tensor.encoding)
    if encoding is None:
        raise CodecError(f"tensor {tensor.name!r}: unknown encoding enum value {tensor.encoding}")
    if encoding.lossy and dtype != np.float32:
        raise CodecError(f"tensor {tensor.name!r}: encoding {encoding.name} needs dtype float32, got {dtype}")
    compression = _COMPRESSIONS_BY_WIRE.get(tensor.compression)
    if compression is None:
        raise CodecError(f"tensor {tensor.name!r}: unknown compression enum value {tensor.compression}")
    expected_nbytes = numel * encoding.element_size(dtype)
    try:
        payload = compression.decompress(tensor.data, expected_nbytes)
    except CodecError as err:
        raise CodecError(f"tensor {tensor.name!r}: {err}") from err
    if len(payload) != expected_nbytes:
        raise CodecError(
            f"tensor {tensor.name!r}: payload is {len(payload)} bytes, shape {list(shape)} "
            f"with encoding {encoding.name} needs {expected_nbytes}"
        )
    return encoding.decode(payload, shape, dtype, tensor.scale, tensor.zero_point)
