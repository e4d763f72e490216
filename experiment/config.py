"""The experiment config: a TOML file read once into frozen dataclasses.

Every value is checked where it enters, and an error names the file, the key and the value. Paths
of traces are relative to the config file (so a config and its traces travel together); the output
directory is relative to where the experiment is run.

    seed = 0
    out = "out/experiments/classic"
    requests = 20                  # per cell; or seconds = 30
    warmup_requests = 2            # per cell, not recorded
    parquet = false                # also write results.parquet (needs pyarrow)
    models = ["mobilenet_v2", { name = "mobilenet_v2_035", input_shape = [1, 3, 96, 96] }]
    # a model entry may also name `samples` (a folder of images or a .npy/.npz, relative to this file)
    # and `metric` (splitinfer metrics): what its requests cycle over and are judged by
    policies = ["neurosurgeon", "edge-only", "cloud-only"]   # or "adaptive", "best-static" (below)
    codecs = ["int8+zstd"]         # or "auto": the codec is chosen with the cut
    allow_raw_input = false        # cloud-only always may: sending the input is what it is

    [profile]
    repeats = 3

    [device]
    slowdown = 30                  # the device is this many times slower than this machine
    threads = 1                    # onnxruntime threads of the head
    pin = true                     # device and server on different CPUs
    cgroup = false                 # a cgroup CPU quota on the device thread instead of the stretch (root only)
    pace = false                   # each head run takes its profiled time × slowdown (steady on a busy machine)

    [adaptive]                     # policy "adaptive": a multi-cut bundle, the cut chosen per request
    margin = 0.2                   # switch only when another cut is predicted this much faster
    confirm = 3                    # ... on this many consecutive requests
    explore = "5s"                 # while all runs on the device, one request this often is sent split

    [[conditions]]
    preset = "4g"                  # cat1, 3g, 4g, wifi; `rtt` may override its RTT
    [[conditions]]
    name = "att-lte"
    trace = "traces/ATT-LTE-driving-2016.up"   # mahimahi or seconds,Mbit/s .csv (uplink)
    rtt = "40ms"
    [[conditions]]
    rate = "2mbit"                 # a fixed uplink; `down` sets a downlink rate (default unlimited)
    rtt = "30ms"
    loss = "1%"                    # packet loss each way (or 0.01); needs backend "tun" or "auto"
    backend = "tun"                # netemu backend: user (default), kernel, tun, auto

Policies are the splitter's (planned once per cell from the profile) and two the runner itself
runs: "adaptive" (the edge runtime chooses the cut and codec before each request from its own
link estimate; see edge_runtime.adaptive) and "best-static" (the one cut with the lowest predicted
mean latency over the cell's link, trace included: a clairvoyant static choice, see
experiment.oracle). Any policy that sends something may end in "+race" ("adaptive+race",
"best-static+race", "neurosurgeon+race"): the device also runs the rest of the model itself and
the first answer wins (EdgeClient race_local); "best-static+race" is then the cut best at racing.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos.errors import SplitInferError

_TOP_KEYS = {
    "seed", "out", "requests", "seconds", "warmup_requests", "models", "policies", "codecs",
    "allow_raw_input", "profile", "device", "conditions", "adaptive", "parquet",
}  # fmt: skip
_ADAPTIVE_KEYS = {"margin", "confirm", "explore"}
ADAPTIVE = "adaptive"
BEST_STATIC = "best-static"
# Policies the runner runs itself rather than the splitter's planner.
RUNTIME_POLICIES = (ADAPTIVE, BEST_STATIC)
RACE_SUFFIX = "+race"
# A policy that never sends has nothing to race.
_NEVER_SENDS = ("edge-only",)
_CONDITION_KEYS = {"name", "preset", "rate", "rtt", "trace", "down", "loss", "backend"}
_DEVICE_KEYS = {"slowdown", "threads", "pin", "cgroup", "pace"}
_PROFILE_KEYS = {"repeats"}
_MODEL_KEYS = {"name", "input_shape", "samples", "metric"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...] | None = None
    # The inputs requests cycle over and the metric they are judged by (splitter.accuracy.samples,
    # splitter.metrics): the model's own when not given. `samples` relative to the config file.
    samples: Path | None = None
    metric: str | None = None

    @property
    def label(self) -> str:
        shape = f"@{'x'.join(map(str, self.input_shape[2:]))}" if self.input_shape else ""
        return self.name + shape


@dataclass(frozen=True)
class Condition:
    """One network condition. Exactly one of `rate_bps` and `trace` is set; `rtt_ms` is split
    evenly into the two directions' one-way delays; `down_bps` None is an unlimited downlink;
    `loss` applies to each direction; `backend` is the netemu backend that emulates it."""

    name: str
    rtt_ms: float
    rate_bps: float | None = None
    trace: Path | None = None
    down_bps: float | None = None
    loss: float = 0.0
    backend: str = "user"

    @property
    def is_trace(self) -> bool:
        return self.trace is not None


@dataclass(frozen=True)
class DeviceConfig:
    slowdown: float = 1.0
    threads: int = 1
    pin: bool = True
    cgroup: bool = False
    pace: bool = False


@dataclass(frozen=True)
class AdaptiveConfig:
    margin: float = 0.2
    confirm: int = 3
    explore_s: float = 5.0


@dataclass(frozen=True)
class ExperimentConfig:
    source: Path
    models: tuple[ModelSpec, ...]
    policies: tuple[str, ...]
    codecs: tuple[str, ...]
    conditions: tuple[Condition, ...]
    device: DeviceConfig
    out: Path
    seed: int = 0
    requests: int | None = 20
    seconds: float | None = None
    warmup_requests: int = 2
    allow_raw_input: bool = False
    profile_repeats: int = 3
    adaptive: AdaptiveConfig = AdaptiveConfig()
    parquet: bool = False


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise SplitInferError(f"experiment config {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SplitInferError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], source: Path) -> ExperimentConfig:
    """The config from parsed TOML; `source` names the file in errors and anchors trace paths."""
    where = str(source)
    _no_unknown(data, _TOP_KEYS, where, "")
    requests, seconds = data.get("requests"), data.get("seconds")
    if requests is not None and seconds is not None:
        raise SplitInferError(f"{where}: give `requests` or `seconds` per cell, not both")
    if requests is not None or seconds is None:
        requests = _int(data, "requests", where, minimum=1, default=20)
    if seconds is not None:
        seconds = _positive(data, "seconds", where)
    device = data.get("device", {})
    profile = data.get("profile", {})
    adaptive = data.get("adaptive", {})
    for key, table in (("device", device), ("profile", profile), ("adaptive", adaptive)):
        if not isinstance(table, dict):
            raise SplitInferError(f"{where}: [{key}] must be a table, got {table!r}")
    _no_unknown(device, _DEVICE_KEYS, where, "device.")
    if device.get("pace") is True and device.get("cgroup") is True:
        raise SplitInferError(f"{where}: device.pace and device.cgroup both slow the head; choose one")
    _no_unknown(profile, _PROFILE_KEYS, where, "profile.")
    _no_unknown(adaptive, _ADAPTIVE_KEYS, where, "adaptive.")
    conditions = data.get("conditions")
    if not isinstance(conditions, list) or not conditions:
        raise SplitInferError(f"{where}: `conditions` must list at least one [[conditions]] table")
    parsed_conditions = tuple(_condition(c, i, where, source.parent) for i, c in enumerate(conditions))
    names = [c.name for c in parsed_conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SplitInferError(f"{where}: condition names {duplicates} repeat; give each a distinct `name`")
    out = data.get("out", f"out/experiments/{source.stem}")
    if not isinstance(out, str) or not out:
        raise SplitInferError(f"{where}: `out` must be a directory path, got {out!r}")
    return ExperimentConfig(
        source=source,
        models=tuple(_model(m, where, source.parent) for m in _list(data, "models", where)),
        policies=tuple(_policy(p, where) for p in _names(data, "policies", where, default=("neurosurgeon",))),
        codecs=tuple(_codec(c, where) for c in _names(data, "codecs", where, default=("int8+zstd",))),
        conditions=parsed_conditions,
        device=DeviceConfig(
            slowdown=_positive(device, "slowdown", where, "device.", default=1.0),
            threads=_int(device, "threads", where, "device.", minimum=1, default=1),
            pin=_bool(device, "pin", where, "device.", default=True),
            cgroup=_bool(device, "cgroup", where, "device.", default=False),
            pace=_bool(device, "pace", where, "device.", default=False),
        ),
        out=Path(out),
        seed=_int(data, "seed", where, minimum=0, default=0),
        requests=requests,
        seconds=seconds,
        warmup_requests=_int(data, "warmup_requests", where, minimum=0, default=2),
        allow_raw_input=_bool(data, "allow_raw_input", where, default=False),
        profile_repeats=_int(profile, "repeats", where, "profile.", minimum=1, default=3),
        adaptive=_adaptive(adaptive, where),
        parquet=_parquet(data, where),
    )


def _parquet(data: dict[str, Any], where: str) -> bool:
    from experiment.results import parquet_unavailable_reason

    wanted = _bool(data, "parquet", where, default=False)
    reason = parquet_unavailable_reason() if wanted else None
    if reason is not None:
        raise SplitInferError(f"{where}: parquet = true, but {reason}")
    return wanted


def _adaptive(table: dict[str, Any], where: str) -> AdaptiveConfig:
    from protos.units import parse_duration_ms

    margin = table.get("margin", AdaptiveConfig.margin)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (math.isfinite(margin) and margin >= 0):
        raise SplitInferError(f"{where}: adaptive.margin must be a number ≥ 0, got {margin!r}")
    explore_s = 5.0
    if "explore" in table:
        try:
            explore_s = parse_duration_ms(str(table["explore"])) / 1e3
        except SplitInferError as err:
            raise SplitInferError(f"{where}: adaptive.explore: {err}") from None
    return AdaptiveConfig(float(margin), _int(table, "confirm", where, "adaptive.", minimum=1, default=AdaptiveConfig.confirm), explore_s)


def _condition(table: object, index: int, where: str, base: Path) -> Condition:
    from splitter.cost.network import PRESETS
    from protos.units import parse_duration_ms, parse_rate_bps

    at = f"conditions[{index}]."
    if not isinstance(table, dict):
        raise SplitInferError(f"{where}: conditions[{index}] must be a table, got {table!r}")
    _no_unknown(table, _CONDITION_KEYS, where, at)
    given = [key for key in ("preset", "rate", "trace") if key in table]
    if len(given) != 1:
        raise SplitInferError(f"{where}: conditions[{index}] needs exactly one of preset, rate, trace; got {given or 'none'}")

    def parsed(key: str, parse: Any) -> Any:
        try:
            return parse(str(table[key]))
        except SplitInferError as err:
            raise SplitInferError(f"{where}: {at}{key}: {err}") from None

    rtt_ms = parsed("rtt", parse_duration_ms) if "rtt" in table else None
    down_bps = parsed("down", parse_rate_bps) if "down" in table else None
    link = _link_settings(table, where, at)
    if "preset" in table:
        preset = PRESETS.get(str(table["preset"]).lower())
        if preset is None:
            raise SplitInferError(f"{where}: {at}preset {table['preset']!r} is not one of {', '.join(PRESETS)}")
        return Condition(
            str(table.get("name", preset.name)), preset.rtt_ms if rtt_ms is None else rtt_ms, preset.bandwidth_bps, None, down_bps, **link
        )
    if rtt_ms is None:
        raise SplitInferError(f"{where}: conditions[{index}] needs `rtt` (e.g. \"40ms\") with a rate or a trace")
    if "rate" in table:
        rate = parsed("rate", parse_rate_bps)
        return Condition(str(table.get("name", f"{rate / 1e6:g}mbit")), rtt_ms, rate, None, down_bps, **link)
    trace = Path(str(table["trace"]))
    trace = trace if trace.is_absolute() else base / trace
    if not trace.is_file():
        raise SplitInferError(f"{where}: {at}trace {str(table['trace'])!r} does not exist (looked at {str(trace)!r})")
    return Condition(str(table.get("name", trace.stem)), rtt_ms, None, trace, down_bps, **link)


def _link_settings(table: dict[str, Any], where: str, at: str) -> dict[str, Any]:
    """`loss` ("1%" or 0.01) and `backend` of a condition, checked together: only the tun backend
    (or auto, which then picks it) can drop packets."""
    from netemu.link import BACKENDS
    from protos.units import parse_share

    backend = table.get("backend", Condition.backend)
    if backend not in BACKENDS:
        raise SplitInferError(f"{where}: {at}backend {backend!r} is not one of {', '.join(BACKENDS)}")
    raw = table.get("loss", 0.0)
    try:
        loss = parse_share(raw, "loss")
    except SplitInferError as err:
        raise SplitInferError(f"{where}: {at}{err}") from None
    if loss and backend not in ("tun", "auto"):
        raise SplitInferError(f"{where}: {at}loss {raw!r} needs backend = \"tun\" (the {backend} backend cannot drop packets)")
    return {"loss": loss, "backend": backend}


def _model(item: object, where: str, base: Path) -> ModelSpec:
    if isinstance(item, str) and item:
        return ModelSpec(item)
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        _no_unknown(item, _MODEL_KEYS, where, "models[].")
        shape = item.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
            raise SplitInferError(f"{where}: models: input_shape {shape!r} of {item['name']!r} must be positive integers like [1, 3, 96, 96]")
        samples = item.get("samples")
        if samples is not None:
            from splitter.accuracy.samples import check_samples_path

            samples = Path(samples) if Path(samples).is_absolute() else base / samples
            try:
                check_samples_path(samples)
            except SplitInferError as err:
                raise SplitInferError(f"{where}: models: {item['name']!r}: {err}") from None
        metric = item.get("metric")
        if metric is not None:
            from splitter.metrics import create_metric

            create_metric(str(metric))
        return ModelSpec(item["name"], tuple(shape) if shape is not None else None, samples, metric)
    raise SplitInferError(f"{where}: models: {item!r} is neither a model name nor {{ name = ..., input_shape = [...] }}")


def split_race(policy: str) -> tuple[str, bool]:
    """("adaptive", True) for "adaptive+race": the policy, and whether its requests race."""
    if policy.endswith(RACE_SUFFIX):
        return policy.removesuffix(RACE_SUFFIX), True
    return policy, False


def _policy(name: str, where: str) -> str:
    from splitter.policies import create_policy

    base, race = split_race(name)
    if race and base in _NEVER_SENDS:
        raise SplitInferError(f"{where}: policies: {name!r}: {base} sends nothing, so there is nothing to race")
    if base in RUNTIME_POLICIES:
        return name
    try:
        create_policy(base)
    except (SplitInferError, ValueError) as err:
        raise SplitInferError(f"{where}: policies: {err}") from None
    return name


def _codec(name: str, where: str) -> str:
    from protos.codec import Codec
    from splitter.cost.plan import AUTO_CODEC

    if name == AUTO_CODEC:
        return name
    try:
        return Codec.parse(name).name
    except SplitInferError as err:
        raise SplitInferError(f"{where}: codecs: {err}") from None


def _no_unknown(table: dict[str, Any], known: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise SplitInferError(f"{where}: unknown key {prefix}{unknown[0]}; known: {', '.join(sorted(known))}")


def _list(data: dict[str, Any], key: str, where: str) -> list:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise SplitInferError(f"{where}: `{key}` must be a non-empty list, got {value!r}")
    return value


def _names(data: dict[str, Any], key: str, where: str, default: tuple[str, ...]) -> list[str]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SplitInferError(f"{where}: `{key}` must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise SplitInferError(f"{where}: `{key}` lists a name twice: {value!r}")
    return value


def _int(table: dict[str, Any], key: str, where: str, prefix: str = "", *, minimum: int, default: int | None = None) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SplitInferError(f"{where}: {prefix}{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _positive(table: dict[str, Any], key: str, where: str, prefix: str = "", *, default: float | None = None) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise SplitInferError(f"{where}: {prefix}{key} must be a positive number, got {value!r}")
    return float(value)


def _bool(table: dict[str, Any], key: str, where: str, prefix: str = "", *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise SplitInferError(f"{where}: {prefix}{key} must be true or false, got {value!r}")
    return value
