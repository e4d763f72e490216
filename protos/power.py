"""The device's power model: what a request costs the device's battery, from its time and bytes.
Part of a DeviceProfile (protos.device_profile), which the device writes and the planner reads.

    energy = compute power × device compute time
           + radio energy per byte × bytes sent
           + idle power × time the device waits (transfer, round trip, server)

Compute time is the head and the encoding (on the device, after the profile's edge slowdown). The
radio's per-byte energy is its marginal cost over idle; the device draws idle power the whole time
it waits, transfer included. One energy per byte is a simplification: an LTE radio's power grows
with the uplink rate (Huang et al., MobiSys 2012: P = 438 mW/Mbit/s × rate + 1288 mW), so its
energy per byte depends on the network; calibrate a DeviceProfile per network where that matters.

The defaults are a phone-class device on 4G, from the literature, not measured here: a big core
under load draws ~2 W; the LTE model above at 5.85 Mbit/s gives 3.85 W / 731 kB/s = 5.3 µJ/byte;
a phone idling with its radio connected draws ~0.5 W. A DeviceProfile records the values for its
device (`splitinfer calibrate --compute-w ... --radio-uj-per-byte ... --idle-w ...`, from a power
meter), and says where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.errors import SplitInferError


@dataclass(frozen=True)
class PowerModel:
    compute_w: float = 2.0
    radio_j_per_byte: float = 5.3e-6
    idle_w: float = 0.5
    # Where the numbers come from: "literature defaults", "measured with ...".
    source: str = "literature defaults (phone-class CPU, LTE uplink at 5.85 Mbit/s)"

    def __post_init__(self) -> None:
        for name in ("compute_w", "radio_j_per_byte", "idle_w"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and value != float("inf")):
                raise SplitInferError(f"power model {name} must be a finite non-negative number, got {value!r}")

    def energy_mj(self, *, compute_ms: float, nbytes: int, waiting_ms: float) -> float:
        """Device energy in millijoules (W × ms = mJ)."""
        return self.compute_w * compute_ms + self.radio_j_per_byte * nbytes * 1e3 + self.idle_w * waiting_ms

    def to_dict(self) -> dict:
        return {
            "compute_w": self.compute_w,
            "radio_j_per_byte": self.radio_j_per_byte,
            "idle_w": self.idle_w,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PowerModel:
        if not isinstance(data, dict):
            raise SplitInferError(f"power model must be an object, got {type(data).__name__}")
        try:
            return cls(
                float(data["compute_w"]),
                float(data["radio_j_per_byte"]),
                float(data["idle_w"]),
                str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SplitInferError(f"malformed power model: {type(err).__name__}: {err}") from err
