"""The fp16 decoder's lookup table gives numpy's own float16 → float32 conversion bit for bit, for
every one of the 65536 halves (NaN payloads included), through the codec's round trip."""

from __future__ import annotations

import numpy as np

from protos import codec as wire_codec


def test_every_half_decodes_to_numpys_float32_bits() -> None:
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    with np.errstate(invalid="ignore"):
        wide = halves.astype(np.float32)
    tensor = wire_codec.encode("x", wide, wire_codec.Codec("fp16"))
    decoded = wire_codec.decode(tensor)
    assert decoded.dtype == np.float32 and decoded.shape == wide.shape
    np.testing.assert_array_equal(decoded.view(np.uint32), wide.view(np.uint32))


def test_an_fp16_round_trip_is_numpys() -> None:
    activation = np.random.default_rng(1).standard_normal((1, 8, 17, 5)).astype(np.float32) * 300
    decoded = wire_codec.decode(wire_codec.encode("x", activation, wire_codec.Codec("fp16")))
    assert decoded.shape == activation.shape
    np.testing.assert_array_equal(decoded, activation.astype(np.float16).astype(np.float32))
