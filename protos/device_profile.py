"""The DeviceProfile document: what one device (one onnxruntime configuration: its thread count,
its NCHWc block size) takes to run each kind of kernel, as `splitinfer calibrate` fits it on the
device (edge_runtime.calibration writes it) and the planner predicts with it
(splitter.profile.predict.device reads it). Its one schema, for both sides.

A kernel's time is `coefficients[kind] · features`, over FEATURES (a fixed cost, MACs, bytes in,
bytes out, weight bytes), plus the kind's cold start once per run; a run adds its fixed
`overhead_ms` and `output_ms_per_byte` per byte it returns. `fit` reports how well each kind's
regression fitted, `measurements` keeps every benchmark's times, `power` the device's energy model.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protos.errors import SplitInferError
from protos.power import PowerModel

FORMAT_VERSION = 1
KIND = "splitinfer-device-profile"
# What a kernel's regression is over, in this order (the calibration suite's manifest says the same).
FEATURES = ("one", "macs", "in_bytes", "out_bytes", "weight_bytes")


def machine_facts() -> dict[str, str]:
    """The machine a profile was measured on, for people reading it."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    threads: int
    nchwc_block: int
    overhead_ms: float
    # What a run spends handing each byte of its outputs to the caller (a copy into a new array).
    output_ms_per_byte: float
    # Kernel kind → coefficients over FEATURES (ms per unit).
    coefficients: dict[str, tuple[float, ...]]
    # Kernel kind → what the first kernel of that kind costs a run on top (cold code after an idle gap).
    cold_ms: dict[str, float]
    power: PowerModel
    engine: dict[str, object]
    machine: dict[str, str]
    suite: str
    fit: dict[str, dict] = field(default_factory=dict)
    measurements: dict[str, dict[str, float]] = field(default_factory=dict)
    # How the suite was timed (edge_runtime.calibration.Timing), and the profiler's own cost per kernel.
    timing: dict[str, object] = field(default_factory=dict)
    profiler_stamp_ms: float = 0.0

    def describe(self) -> str:
        version = self.engine.get("version", "?")
        return f"DeviceProfile {self.name!r} ({self.threads} thread(s), onnxruntime {version}, {self.suite})"

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "name": self.name,
            "suite": self.suite,
            "engine": dict(self.engine),
            "machine": dict(self.machine),
            "timing": dict(self.timing),
            "nchwc_block": self.nchwc_block,
            "overhead_ms": self.overhead_ms,
            "output_ms_per_byte": self.output_ms_per_byte,
            "profiler_stamp_ms": self.profiler_stamp_ms,
            "cold_ms": dict(self.cold_ms),
            "features": list(FEATURES),
            "coefficients": {kind: list(values) for kind, values in self.coefficients.items()},
            "fit": dict(self.fit),
            "power": self.power.to_dict(),
            "measurements": dict(self.measurements),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DeviceProfile:
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise SplitInferError("not a device profile (written by `splitinfer calibrate`)")
        if data.get("format_version") != FORMAT_VERSION:
            raise SplitInferError(f"device profile format_version {data.get('format_version')} is not {FORMAT_VERSION}")
        try:
            if list(data["features"]) != list(FEATURES):
                raise SplitInferError(
                    f"device profile features {data['features']} are not {list(FEATURES)}; calibrate again"
                )
            return cls(
                name=str(data["name"]),
                threads=int(data["engine"]["threads"]),
                nchwc_block=int(data["nchwc_block"]),
                overhead_ms=float(data["overhead_ms"]),
                output_ms_per_byte=float(data.get("output_ms_per_byte", 0.0)),
                coefficients={k: tuple(float(x) for x in v) for k, v in data["coefficients"].items()},
                cold_ms={k: float(v) for k, v in data.get("cold_ms", {}).items()},
                power=PowerModel.from_dict(data["power"]),
                engine=dict(data["engine"]),
                machine=dict(data["machine"]),
                suite=str(data["suite"]),
                fit=dict(data.get("fit", {})),
                measurements=dict(data.get("measurements", {})),
                timing=dict(data.get("timing", {})),
                profiler_stamp_ms=float(data.get("profiler_stamp_ms", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SplitInferError(f"malformed device profile: {type(err).__name__}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SplitInferError(f"device profile {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SplitInferError(f"device profile {str(path)!r} cannot be read: {err}") from err
        try:
            return cls.from_dict(data)
        except SplitInferError as err:
            raise SplitInferError(f"device profile {str(path)!r}: {err}") from err

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path
