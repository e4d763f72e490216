"""The tensor codec: how an activation becomes the bytes of a `splitinfer.v1.Tensor`, and back.

A Codec is an encoding (raw / fp16 / int8 affine per tensor / int8 or 4-bit affine per channel)
followed by a compression (none / zstd). Both are registries, so a new encoding is one class and
one `register_encoding` call. Lossy encodings apply to float32 tensors only; tensors of any other
dtype always travel raw (the wire message says so).

A sender may clamp a float tensor before encoding it, to the range every reader of it in the tail
clamps it to (the manifest's `TensorSpec.clamp`): the tail then computes what it would have from
the unclamped tensor, and a lossy encoding spends its levels on values that matter. The receiver
does nothing different.

Decoding never trusts the sender's sizes: the payload length is derived from the declared shape and
checked exactly; compressed data must be exactly one zstd frame (a second frame or trailing bytes
are refused), and a frame that would inflate past the expected size (a decompression bomb) is
refused without inflating it.
"""

from __future__ import annotations

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

# (low, high) a tensor may be clamped to before encoding; None: unbounded on that side.
Clamp = tuple[float | None, float | None]

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
    channel_axis: int = 0
    channel_scales: tuple[float, ...] = ()
    channel_zero_points: tuple[int, ...] = ()


class Encoding(Protocol):
    name: str
    wire: int
    lossy: bool

    def payload_nbytes(self, numel: int, dtype: np.dtype) -> int: ...
    def encode(self, array: np.ndarray) -> Encoded: ...
    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: np.dtype, tensor: pb.Tensor) -> np.ndarray: ...


_ENCODINGS: dict[str, Encoding] = {}
_ENCODINGS_BY_WIRE: dict[int, Encoding] = {}


def register_encoding(encoding: Encoding) -> Encoding:
    _ENCODINGS[encoding.name] = encoding
    _ENCODINGS_BY_WIRE[encoding.wire] = encoding
    return encoding


class RawEncoding:
    name, wire, lossy = "fp32", pb.ENCODING_RAW, False

    def payload_nbytes(self, numel: int, dtype: np.dtype) -> int:
        return numel * dtype.itemsize

    def encode(self, array: np.ndarray) -> Encoded:
        return Encoded(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())

    def decode(self, payload, shape, dtype, tensor):
        return np.frombuffer(payload, dtype=dtype).reshape(shape)


# numpy widens float16 to float32 one value at a time (~6 ns each here: more than int8's whole
# decode), so the fp16 decoder looks each half up in the table of all 65536 of them, which numpy
# itself converted: the same values, bit for bit, several times faster.
_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


class Fp16Encoding:
    name, wire, lossy = "fp16", pb.ENCODING_FP16, True

    def payload_nbytes(self, numel: int, dtype: np.dtype) -> int:
        return 2 * numel

    def encode(self, array: np.ndarray) -> Encoded:
        with np.errstate(over="ignore"):
            half = array.astype("<f2")
        # min/max cost a tenth of an isinf pass over the result; only a tensor reaching past fp16's
        # range (or holding NaN, which fails both comparisons) needs the exact check.
        in_range = array.size == 0 or (array.min() >= -65504 and array.max() <= 65504)
        if not in_range and (np.isinf(half) & ~np.isinf(array)).any():
            raise CodecError("fp16 encoding cannot carry values beyond ±65504; use fp32 or int8")
        return Encoded(half.tobytes())

    def decode(self, payload, shape, dtype, tensor):
        return _HALF_TO_FLOAT.take(np.frombuffer(payload, dtype="<u2")).reshape(shape).astype(dtype, copy=False)


class Int8AffineEncoding:
    """Per-tensor affine int8. The range always includes 0, so ReLU zeros stay exact zeros (and
    compress well); value = (q - zero_point) * scale."""

    name, wire, lossy = "int8", pb.ENCODING_INT8_AFFINE, True

    def payload_nbytes(self, numel: int, dtype: np.dtype) -> int:
        return numel

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

    def decode(self, payload, shape, dtype, tensor):
        scale = tensor.scale
        if not (math.isfinite(scale) and scale > 0):
            raise CodecError(f"int8 affine scale must be a finite positive number, got {scale}")
        # The encoder never makes another: outside the int8 range every value is shifted garbage.
        if not -128 <= tensor.zero_point <= 127:
            raise CodecError(f"int8 affine zero_point must lie in [-128, 127], got {tensor.zero_point}")
        q = np.frombuffer(payload, dtype=np.int8).reshape(shape)
        out = q.astype(np.float32)
        out -= np.float32(tensor.zero_point)
        out *= np.float32(scale)
        return out


class ChannelAffineEncoding:
    """Affine quantisation with one scale and zero point per channel (axis 1, or 0 for vectors).

    Activations differ in range from channel to channel by orders of magnitude; one scale for the
    whole tensor spends the levels on the widest channel and flattens the rest. Each channel's
    range includes 0 so ReLU zeros stay exact."""

    lossy = True

    def __init__(self, name: str, wire: int, bits: int) -> None:
        self.name, self.wire, self.bits = name, wire, bits
        self.qmin, self.qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if bits == 8 else (0, (1 << bits) - 1)

    def payload_nbytes(self, numel: int, dtype: np.dtype) -> int:
        return numel if self.bits == 8 else (numel + 1) // 2

    def encode(self, array: np.ndarray) -> Encoded:
        axis = 1 if array.ndim >= 2 else 0
        array = array.reshape(1) if array.ndim == 0 else array  # a scalar is one channel of one value
        if array.size == 0:
            channels = array.shape[axis]
            return Encoded(
                b"", channel_axis=axis, channel_scales=(1.0,) * channels, channel_zero_points=(0,) * channels
            )
        others = tuple(i for i in range(array.ndim) if i != axis)
        lo = np.minimum(array.min(axis=others), 0).astype(np.float64)
        hi = np.maximum(array.max(axis=others), 0).astype(np.float64)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise CodecError(f"{self.name} encoding cannot carry non-finite values (NaN or inf); use fp32 or fp16")
        scale = (hi - lo) / (self.qmax - self.qmin)
        scale[scale == 0] = 1.0
        zero_point = np.clip(np.round(self.qmin - lo / scale), self.qmin, self.qmax)
        view = [1] * array.ndim
        view[axis] = -1
        q = np.multiply(array, (1.0 / scale).astype(np.float32).reshape(view), dtype=np.float32)
        q += zero_point.astype(np.float32).reshape(view)
        np.rint(q, out=q)
        np.clip(q, self.qmin, self.qmax, out=q)
        return Encoded(
            self._pack(q.reshape(-1)),
            channel_axis=axis,
            channel_scales=tuple(scale.tolist()),
            channel_zero_points=tuple(zero_point.astype(np.int32).tolist()),
        )

    def _pack(self, q: np.ndarray) -> bytes:
        if self.bits == 8:
            return q.astype(np.int8).tobytes()
        q = q.astype(np.uint8)
        if q.size % 2:
            q = np.append(q, np.uint8(0))
        return (q[0::2] | (q[1::2] << 4)).tobytes()

    def decode(self, payload, shape, dtype, tensor):
        axis, numel = tensor.channel_axis, math.prod(shape)
        if not 0 <= axis < max(len(shape), 1):
            raise CodecError(f"channel_axis {axis} is out of range for shape {list(shape)}")
        channels = shape[axis] if shape else 1
        scales = np.asarray(tensor.channel_scales, np.float32)
        zero_points = np.asarray(tensor.channel_zero_points, np.float32)
        if len(scales) != channels or len(zero_points) != channels:
            raise CodecError(
                f"{self.name}: {len(scales)} scales and {len(zero_points)} zero points for {channels} channels"
            )
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise CodecError(f"{self.name}: channel scales must be finite positive numbers")
        if ((zero_points < self.qmin) | (zero_points > self.qmax)).any():
            raise CodecError(f"{self.name}: channel zero points must lie in [{self.qmin}, {self.qmax}]")
        raw = np.frombuffer(payload, dtype=np.int8 if self.bits == 8 else np.uint8)
        if self.bits == 8:
            out = raw.astype(np.float32)
        else:
            out = np.empty(raw.size * 2, np.float32)
            out[0::2] = raw & 0x0F
            out[1::2] = raw >> 4
            # The encoder pads an odd count with a zero nibble; anything else is not its output.
            if numel % 2 and raw.size and raw[-1] >> 4:
                raise CodecError(f"{self.name}: the padding nibble after the last value must be 0")
            out = out[:numel]
        view = [1] * max(len(shape), 1)
        view[axis] = -1
        out = out.reshape(shape or (1,))
        out -= zero_points.reshape(view)
        out *= scales.reshape(view)
        return out.reshape(shape)


for _encoding in (
    RawEncoding(),
    Fp16Encoding(),
    Int8AffineEncoding(),
    ChannelAffineEncoding("int8ch", pb.ENCODING_INT8_CHANNEL, bits=8),
    ChannelAffineEncoding("int4ch", pb.ENCODING_UINT4_CHANNEL, bits=4),
):
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
        """Exactly one frame, nothing after it, inflating to at most `expected_nbytes`: a frame
        that records a larger content size is refused before anything is allocated, one that
        records none is bounded as it inflates."""
        if not hasattr(self._local, "decompressor"):
            self._local.decompressor = zstandard.ZstdDecompressor()
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as err:
            raise CodecError(f"corrupt zstd data: {err}") from err
        if declared != -1 and declared > expected_nbytes:
            raise CodecError(
                f"corrupt zstd data or a decompression bomb: its frame header declares {declared} bytes, "
                f"its shape allows {expected_nbytes}"
            )
        try:
            out = self._local.decompressor.decompress(
                data, max_output_size=max(expected_nbytes, 1), allow_extra_data=False
            )
        except zstandard.ZstdError as err:
            if "did not decompress full frame" in str(err):
                raise CodecError(
                    f"zstd frame is truncated or inflates beyond the {expected_nbytes} bytes its shape allows "
                    "(decompression bomb?)"
                ) from err
            raise CodecError(f"corrupt zstd data (one frame, nothing after it): {err}") from err
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
        if self.encoding not in _ENCODINGS or self.compression not in _COMPRESSIONS:
            what = "encoding" if self.encoding not in _ENCODINGS else "compression"
            value = self.encoding if what == "encoding" else self.compression
            compressions = "/".join(f"+{c}" for c in _COMPRESSIONS if c != "none")
            raise CodecError(
                f"unknown {what} {value!r}; codecs are {', '.join(_ENCODINGS)}, each optionally {compressions}"
            )

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

    @property
    def encoding_wire(self) -> int:
        """The Encoding enum value of this codec's encoding (for a float32 tensor)."""
        return _ENCODINGS[self.encoding].wire

    @property
    def compression_wire(self) -> int:
        return _COMPRESSIONS[self.compression].wire

    def __str__(self) -> str:
        return self.name


def encoding_name(wire: int) -> str | None:
    """The registered encoding of an Encoding enum value; None when there is none."""
    encoding = _ENCODINGS_BY_WIRE.get(wire)
    return encoding.name if encoding is not None else None


def compression_name(wire: int) -> str | None:
    compression = _COMPRESSIONS_BY_WIRE.get(wire)
    return compression.name if compression is not None else None


def list_codecs() -> list[Codec]:
    """Every registered encoding × compression."""
    return [Codec(e, c) for e in _ENCODINGS for c in _COMPRESSIONS]


def encode(name: str, array: np.ndarray, codec: Codec, clamp: Clamp | None = None) -> pb.Tensor:
    """One array → a wire Tensor. Non-float32 arrays travel raw whatever the codec says. With
    `clamp`, the array is clamped first (see clamped)."""
    array = clamped(np.asarray(array), codec, clamp)
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
        channel_axis=encoded.channel_axis,
        channel_scales=encoded.channel_scales,
        channel_zero_points=encoded.channel_zero_points,
        data=compression.compress(encoded.payload, codec.level),
    )


def clamped(array: np.ndarray, codec: Codec, clamp: Clamp | None) -> np.ndarray:
    """`array` clamped to `clamp` when that can change its bytes: a float32 array whose encoding is
    lossy or compressed (raw fp32 is sent as it is: the copy would only cost time)."""
    if clamp is None or array.dtype != np.float32 or (codec.encoding == "fp32" and codec.compression == "none"):
        return array
    return np.clip(array, clamp[0], clamp[1])


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
    expected_nbytes = encoding.payload_nbytes(numel, dtype)
    try:
        payload = compression.decompress(tensor.data, expected_nbytes)
    except CodecError as err:
        raise CodecError(f"tensor {tensor.name!r}: {err}") from err
    if len(payload) != expected_nbytes:
        raise CodecError(
            f"tensor {tensor.name!r}: payload is {len(payload)} bytes, shape {list(shape)} "
            f"with encoding {encoding.name} needs {expected_nbytes}"
        )
    try:
        return encoding.decode(payload, shape, dtype, tensor)
    except CodecError as err:
        raise CodecError(f"tensor {tensor.name!r}: {err}") from err
