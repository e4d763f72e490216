"""The tensor codec: round trips for every registered codec, and every way a wire tensor can lie."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import zstandard
from bundles import zstd_bomb

from protos.codec import Codec, decode, encode, list_codecs
from protos.errors import CodecError
from protos.splitinfer.v1 import inference_pb2 as pb

CODECS = list_codecs()


def _activation(shape: tuple[int, ...] = (1, 8, 16, 16), seed: int = 0) -> np.ndarray:
    """ReLU-like: about half exact zeros, the rest positive with a spread of magnitudes."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3.0
    return np.maximum(values, 0.0)


@pytest.mark.parametrize("codec", CODECS, ids=str)
def test_round_trip_within_the_codec_error(codec: Codec) -> None:
    array = _activation() - 1.0  # negative values too
    tensor = encode("a", array, codec)
    back = decode(pb.Tensor.FromString(tensor.SerializeToString()))
    assert back.dtype == np.float32 and back.shape == array.shape
    if codec.encoding == "fp32":
        np.testing.assert_array_equal(back, array)
    elif codec.encoding == "fp16":
        np.testing.assert_allclose(back, array, rtol=1e-3, atol=1e-6)
    elif tensor.channel_scales:
        # Per channel: each value within half its own channel's step.
        error = np.abs(back - array).max(axis=(0, 2, 3))
        assert (error <= np.asarray(tensor.channel_scales) / 2 + 1e-6).all()
        assert tensor.channel_axis == 1 and len(tensor.channel_scales) == array.shape[1]
    else:
        assert np.abs(back - array).max() <= tensor.scale / 2 + 1e-6


@pytest.mark.parametrize("codec", CODECS, ids=str)
def test_relu_zeros_stay_exact(codec: Codec) -> None:
    array = _activation()
    back = decode(encode("a", array, codec))
    zeros = array == 0
    assert zeros.mean() > 0.3
    np.testing.assert_array_equal(back[zeros], 0.0)


@pytest.mark.parametrize("codec", CODECS, ids=str)
@pytest.mark.parametrize("dtype", ["float16", "int8", "uint8", "int32", "int64", "bool"])
def test_non_float32_tensors_travel_raw_and_exact(codec: Codec, dtype: str) -> None:
    array = (np.random.default_rng(1).standard_normal((2, 3, 5)) * 50).astype(dtype)
    tensor = encode("t", array, codec)
    assert tensor.encoding == pb.ENCODING_RAW
    back = decode(tensor)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("codec", CODECS, ids=str)
@pytest.mark.parametrize("shape", [(0,), (1, 0, 4), ()])
def test_empty_and_scalar_tensors(codec: Codec, shape: tuple[int, ...]) -> None:
    array = np.full(shape, 1.5, dtype=np.float32)
    back = decode(encode("e", array, codec))
    assert back.shape == shape
    np.testing.assert_allclose(back, array, atol=0.01)


def test_zstd_shrinks_relu_activations() -> None:
    array = _activation((1, 32, 28, 28))
    raw = encode("a", array, Codec("fp32", "none"))
    packed = encode("a", array, Codec("int8", "zstd"))
    assert len(packed.data) * 4 < len(raw.data)


def _raw(array: np.ndarray, **fields: object) -> pb.Tensor:
    tensor = encode("t", array, Codec("fp32", "none"))
    for name, value in fields.items():
        if name == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)  # type: ignore[arg-type]
        else:
            setattr(tensor, name, value)
    return tensor


ONES = np.ones((2, 4), np.float32)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (_raw(ONES, compression=pb.COMPRESSION_ZSTD, data=b"\x28\xb5\x2f\xfd" + b"garbage" * 10), "corrupt zstd"),
        (_raw(ONES, compression=pb.COMPRESSION_ZSTD, data=b"not a zstd frame"), "corrupt zstd"),
        (_raw(ONES, data=ONES.tobytes()[:-1]), "payload is 31 bytes"),
        (_raw(ONES, data=ONES.tobytes() + b"\0"), "payload is 33 bytes"),
        (
            _raw(ONES, compression=pb.COMPRESSION_ZSTD, data=zstandard.compress(ONES.tobytes()[:-4])),
            "payload is 28 bytes",
        ),
        (_raw(ONES, dtype=99), "unknown dtype enum value 99"),
        (_raw(ONES, dtype=pb.DTYPE_UNSPECIFIED), "unknown dtype enum value 0"),
        (_raw(ONES, encoding=77), "unknown encoding enum value 77"),
        (_raw(ONES, encoding=pb.ENCODING_UNSPECIFIED), "unknown encoding enum value 0"),
        (_raw(ONES, compression=42), "unknown compression enum value 42"),
        (_raw(ONES, shape=[2, -4]), "negative dimension"),
        (_raw(ONES, shape=[1 << 20, 1 << 20]), "elements, limit"),
        (_raw(ONES, dtype=pb.DTYPE_INT32, encoding=pb.ENCODING_FP16), "needs dtype float32"),
        (_raw(ONES, encoding=pb.ENCODING_INT8_AFFINE, data=bytes(8), scale=0.0), "scale must be a finite positive"),
        (
            _raw(ONES, encoding=pb.ENCODING_INT8_AFFINE, data=bytes(8), scale=float("nan")),
            "scale must be a finite positive",
        ),
        (_raw(ONES, encoding=pb.ENCODING_INT8_AFFINE, data=bytes(8), scale=-1.0), "scale must be a finite positive"),
        (
            _raw(ONES, encoding=pb.ENCODING_INT8_AFFINE, data=bytes(8), scale=1.0, zero_point=1000),
            r"zero_point must lie in \[-128, 127\], got 1000",
        ),
        (
            _raw(ONES, encoding=pb.ENCODING_INT8_AFFINE, data=bytes(8), scale=1.0, zero_point=2**31 - 1),
            "zero_point must lie in",
        ),
        (
            _raw(ONES, encoding=pb.ENCODING_INT8_AFFINE, data=bytes(8), scale=1.0, zero_point=-129),
            "zero_point must lie in",
        ),
    ],
    ids=[
        "corrupt-zstd-after-magic",
        "not-zstd",
        "short-payload",
        "long-payload",
        "short-zstd-payload",
        "unknown-dtype",
        "unspecified-dtype",
        "unknown-encoding",
        "unspecified-encoding",
        "unknown-compression",
        "negative-dim",
        "too-many-elements",
        "lossy-encoding-non-float",
        "zero-scale",
        "nan-scale",
        "negative-scale",
        "zero-point-1000",
        "zero-point-int32-max",
        "zero-point-below-int8",
    ],
)
def test_bad_tensors_raise_codec_error(tensor: pb.Tensor, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(tensor)


def test_max_elements_is_enforced_before_reading() -> None:
    with pytest.raises(CodecError, match="limit 7"):
        decode(_raw(ONES), max_elements=7)


def test_decompression_bomb_is_refused_quickly_and_cheaply() -> None:
    bomb = zstd_bomb(100 << 20)
    assert len(bomb) < 64 << 10
    tensor = _raw(np.ones((1, 4, 8, 8), np.float32), compression=pb.COMPRESSION_ZSTD, data=bomb)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CodecError, match="decompression bomb"):
            decode(tensor)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 4 << 20


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_int8_refuses_non_finite_values(bad: float) -> None:
    array = np.ones((3, 3), np.float32)
    array[1, 1] = bad
    with pytest.raises(CodecError, match="non-finite"):
        encode("a", array, Codec("int8", "zstd"))


@pytest.mark.parametrize("text", ["int4", "fp32+lz4", "", "int8+zstd+x"])
def test_unknown_codec_names_are_refused(text: str) -> None:
    with pytest.raises(CodecError, match="unknown"):
        Codec.parse(text)


def test_dtypes_the_wire_cannot_carry_are_refused() -> None:
    with pytest.raises(CodecError, match="cannot be sent"):
        encode("c", np.ones(3, np.complex64), Codec())


def test_bytes_after_the_zstd_frame_are_refused() -> None:
    tensor = encode("t", np.ones((4, 4), np.float32), Codec("fp32", "zstd"))
    for extra in (b"garbage!", zstandard.ZstdCompressor().compress(b"\0" * 8)):
        bad = pb.Tensor()
        bad.CopyFrom(tensor)
        bad.data += extra
        with pytest.raises(CodecError, match="tensor 't'"):
            decode(bad)


def test_a_payload_split_over_two_zstd_frames_is_refused() -> None:
    """Each frame alone is valid and together they hold exactly the payload: the contract says
    one frame, so a sender that streams frames is told, not silently accepted by this server only."""
    payload = np.arange(16, dtype=np.float32).tobytes()
    tensor = encode("t", np.zeros(16, np.float32), Codec("fp32", "zstd"))
    tensor.data = zstandard.compress(payload[:32]) + zstandard.compress(payload[32:])
    with pytest.raises(CodecError, match="one frame, nothing after it.*unused data"):
        decode(tensor)


def test_a_frame_declaring_more_than_the_shape_allows_is_refused_from_its_header() -> None:
    tensor = encode("t", np.zeros(4, np.float32), Codec("fp32", "zstd"))
    tensor.data = zstandard.compress(bytes(1 << 20))
    with pytest.raises(CodecError, match="frame header declares 1048576 bytes, its shape allows 16"):
        decode(tensor)


def test_the_four_bit_padding_nibble_must_be_zero() -> None:
    tensor = encode("p", np.linspace(-1, 1, 7, dtype=np.float32).reshape(1, 1, 7), Codec("int4ch"))
    assert decode(tensor).shape == (1, 1, 7)
    tensor.data = tensor.data[:-1] + bytes([tensor.data[-1] | 0x50])
    with pytest.raises(CodecError, match="padding nibble"):
        decode(tensor)


def test_fp16_refuses_values_it_cannot_carry() -> None:
    with pytest.raises(CodecError, match="65504"):
        encode("t", np.array([1.0, 1e6], np.float32), Codec("fp16"))
    back = decode(encode("t", np.array([np.inf, -np.inf, 1.0], np.float32), Codec("fp16")))
    assert np.isinf(back[:2]).all() and back[2] == 1.0


def _skewed(shape: tuple[int, ...] = (1, 8, 6, 6)) -> np.ndarray:
    """Channels whose ranges differ by orders of magnitude, as real activations' do."""
    values = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    return values * (10.0 ** np.arange(shape[1], dtype=np.float32) / 100).reshape(1, -1, 1, 1)


def _rel_error(array: np.ndarray, codec: str) -> float:
    back = decode(encode("s", array, Codec.parse(codec)))
    per_channel = np.linalg.norm((back - array).reshape(array.shape[1], -1), axis=1)
    return float((per_channel / np.linalg.norm(array.reshape(array.shape[1], -1), axis=1)).max())


def test_per_channel_scales_keep_small_channels_that_one_scale_flattens() -> None:
    array = _skewed()
    assert _rel_error(array, "int8") > 0.5  # the small channels round to zero
    assert _rel_error(array, "int8ch") < 0.01
    assert _rel_error(array, "int4ch") < 0.15


@pytest.mark.parametrize("numel", [1, 7, 8, 255])
def test_four_bit_values_pack_two_per_byte(numel: int) -> None:
    array = np.linspace(-1, 1, numel, dtype=np.float32).reshape(1, 1, numel)
    tensor = encode("p", array, Codec("int4ch"))
    assert len(tensor.data) == (numel + 1) // 2
    back = decode(tensor)
    assert np.abs(back - array).max() <= tensor.channel_scales[0] / 2 + 1e-6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.channel_scales.pop(), "7 scales and 8 zero points for 8 channels"),
        (lambda t: t.channel_scales.__setitem__(0, 0.0), "channel scales must be finite positive"),
        (lambda t: t.channel_scales.__setitem__(0, float("nan")), "channel scales must be finite positive"),
        (lambda t: t.channel_zero_points.__setitem__(0, 16), r"zero points must lie in \[0, 15\]"),
        (lambda t: setattr(t, "channel_axis", 4), "channel_axis 4 is out of range"),
    ],
)
def test_bad_channel_parameters_are_refused(change, message: str) -> None:
    tensor = encode("bad", _skewed(), Codec("int4ch"))
    change(tensor)
    with pytest.raises(CodecError, match=f"tensor 'bad': .*{message}"):
        decode(tensor)


def test_fp16_carries_nan_and_the_largest_half() -> None:
    back = decode(encode("t", np.array([np.nan, 65504.0, -65504.0, 65519.0], np.float32), Codec("fp16", "zstd")))
    assert np.isnan(back[0]) and back[1] == 65504.0 and back[2] == -65504.0 and back[3] == 65504.0


def test_a_clamp_spends_the_levels_on_the_range_the_reader_keeps() -> None:
    """A pre-activation tensor clamped to ReLU6's range before int8: every value decodes within the
    range, and within it the error is at most half an int8 step over [0, 6]."""
    values = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype(np.float32) * 20.0
    kept = np.clip(values, 0.0, 6.0)
    for name in ("int8+zstd", "int8ch+zstd"):
        codec = Codec.parse(name)
        clamped = decode(encode("t", values, codec, (0.0, 6.0)))
        assert clamped.min() >= 0.0 and clamped.max() <= 6.0 + 1e-6
        assert np.abs(clamped - kept).max() <= 6.0 / 255 / 2 + 1e-6
        unclamped = decode(encode("t", values, codec))
        assert np.abs(np.clip(unclamped, 0, 6) - kept).max() > 4 * np.abs(clamped - kept).max()
    # One side only: a ReLU.
    relu = decode(encode("t", values, Codec.parse("fp16"), (0.0, None)))
    assert relu.min() == 0.0 and relu.max() == pytest.approx(values.max(), rel=1e-3)


def test_a_clamp_leaves_raw_fp32_and_other_dtypes_as_they_are() -> None:
    values = np.linspace(-10, 10, 64, dtype=np.float32)
    assert encode("t", values, Codec.parse("fp32"), (0.0, 6.0)) == encode("t", values, Codec.parse("fp32"))
    ints = np.arange(-5, 5, dtype=np.int32)
    assert np.array_equal(decode(encode("t", ints, Codec.parse("int8+zstd"), (0.0, 6.0))), ints)
    # Compressed fp32 is clamped: its zeros and sixes compress.
    squeezed = encode("t", values, Codec.parse("fp32+zstd"), (0.0, 6.0))
    assert np.array_equal(decode(squeezed), np.clip(values, 0, 6))
