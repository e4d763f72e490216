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
    min_rate = "0.05mbit"          # the bundle carries every (cut, codec) fastest somewhere in
    max_rate = "200mbit"           # ... this uplink range (export-adaptive --min-rate/--max-rate)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from experiment.conditions import Condition, parse_conditions
from experiment.toml_values import boolean, integer, name_list, no_unknown, nonempty_list, positive
from protos.errors import SplitInferError

_TOP_KEYS = {
    "seed",
    "out",
    "requests",
    "seconds",
    "warmup_requests",
    "models",
    "policies",
    "codecs",
    "allow_raw_input",
    "profile",
    "device",
    "conditions",
    "adaptive",
    "parquet",
}
_ADAPTIVE_KEYS = {"margin", "confirm", "explore", "min_rate", "max_rate"}
ADAPTIVE = "adaptive"
BEST_STATIC = "best-static"
# Policies the runner runs itself rather than the splitter's planner.
RUNTIME_POLICIES = (ADAPTIVE, BEST_STATIC)
RACE_SUFFIX = "+race"
# A policy that never sends has nothing to race.
_NEVER_SENDS = ("edge-only",)
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
    # The uplinks the bundle is planned for: export-adaptive's defaults (splitter.export.adaptive).
    min_rate_bps: float = 5e4
    max_rate_bps: float = 2e8


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
    no_unknown(data, _TOP_KEYS, where, "")
    requests, seconds = data.get("requests"), data.get("seconds")
    if requests is not None and seconds is not None:
        raise SplitInferError(f"{where}: give `requests` or `seconds` per cell, not both")
    if requests is not None or seconds is None:
        requests = integer(data, "requests", where, minimum=1, default=20)
    if seconds is not None:
        seconds = positive(data, "seconds", where)
    device = data.get("device", {})
    profile = data.get("profile", {})
    adaptive = data.get("adaptive", {})
    for key, table in (("device", device), ("profile", profile), ("adaptive", adaptive)):
        if not isinstance(table, dict):
            raise SplitInferError(f"{where}: [{key}] must be a table, got {table!r}")
    no_unknown(device, _DEVICE_KEYS, where, "device.")
    if device.get("pace") is True and device.get("cgroup") is True:
        raise SplitInferError(f"{where}: device.pace and device.cgroup both slow the head; choose one")
    no_unknown(profile, _PROFILE_KEYS, where, "profile.")
    no_unknown(adaptive, _ADAPTIVE_KEYS, where, "adaptive.")
    parsed_conditions = parse_conditions(data.get("conditions"), where, source.parent)
    out = data.get("out", f"out/experiments/{source.stem}")
    if not isinstance(out, str) or not out:
        raise SplitInferError(f"{where}: `out` must be a directory path, got {out!r}")
    return ExperimentConfig(
        source=source,
        models=tuple(_model(m, where, source.parent) for m in nonempty_list(data, "models", where)),
        policies=tuple(_policy(p, where) for p in name_list(data, "policies", where, default=("neurosurgeon",))),
        codecs=tuple(_codec(c, where) for c in name_list(data, "codecs", where, default=("int8+zstd",))),
        conditions=parsed_conditions,
        device=DeviceConfig(
            slowdown=positive(device, "slowdown", where, "device.", default=1.0),
            threads=integer(device, "threads", where, "device.", minimum=1, default=1),
            pin=boolean(device, "pin", where, "device.", default=True),
            cgroup=boolean(device, "cgroup", where, "device.", default=False),
            pace=boolean(device, "pace", where, "device.", default=False),
        ),
        out=Path(out),
        seed=integer(data, "seed", where, minimum=0, default=0),
        requests=requests,
        seconds=seconds,
        warmup_requests=integer(data, "warmup_requests", where, minimum=0, default=2),
        allow_raw_input=boolean(data, "allow_raw_input", where, default=False),
        profile_repeats=integer(profile, "repeats", where, "profile.", minimum=1, default=3),
        adaptive=_adaptive(adaptive, where),
        parquet=_parquet(data, where),
    )


def _parquet(data: dict[str, Any], where: str) -> bool:
    from experiment.results import parquet_unavailable_reason

    wanted = boolean(data, "parquet", where, default=False)
    reason = parquet_unavailable_reason() if wanted else None
    if reason is not None:
        raise SplitInferError(f"{where}: parquet = true, but {reason}")
    return wanted


def _adaptive(table: dict[str, Any], where: str) -> AdaptiveConfig:
    from protos.units import parse_duration_ms, parse_rate_bps

    margin = table.get("margin", AdaptiveConfig.margin)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (math.isfinite(margin) and margin >= 0):
        raise SplitInferError(f"{where}: adaptive.margin must be a number ≥ 0, got {margin!r}")
    explore_s = 5.0
    if "explore" in table:
        try:
            explore_s = parse_duration_ms(str(table["explore"])) / 1e3
        except SplitInferError as err:
            raise SplitInferError(f"{where}: adaptive.explore: {err}") from None
    confirm = integer(table, "confirm", where, "adaptive.", minimum=1, default=AdaptiveConfig.confirm)
    rates = []
    for key, default in (("min_rate", AdaptiveConfig.min_rate_bps), ("max_rate", AdaptiveConfig.max_rate_bps)):
        try:
            rates.append(parse_rate_bps(str(table[key])) if key in table else default)
        except SplitInferError as err:
            raise SplitInferError(f"{where}: adaptive.{key}: {err}") from None
    if rates[0] >= rates[1]:
        raise SplitInferError(
            f"{where}: adaptive.min_rate ({rates[0] / 1e6:g} Mbit/s) must be below max_rate ({rates[1] / 1e6:g} Mbit/s)"
        )
    return AdaptiveConfig(float(margin), confirm, explore_s, *rates)


def _model(item: object, where: str, base: Path) -> ModelSpec:
    spec = _model_spec(item, where, base)
    from splitter.catalogue import check_model_spec

    # Checked with the config, before the results folder is made and other cells run.
    try:
        check_model_spec(spec.name)
    except SplitInferError as err:
        raise SplitInferError(f"{where}: models: {err}") from None
    return spec


def _model_spec(item: object, where: str, base: Path) -> ModelSpec:
    if isinstance(item, str) and item:
        return ModelSpec(item)
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        no_unknown(item, _MODEL_KEYS, where, "models[].")
        shape = item.get("input_shape")
        positive_ints = isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)
        if shape is not None and not positive_ints:
            raise SplitInferError(
                f"{where}: models: input_shape {shape!r} of {item['name']!r} "
                "must be positive integers like [1, 3, 96, 96]"
            )
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
    raise SplitInferError(
        f"{where}: models: {item!r} is neither a model name nor {{ name = ..., input_shape = [...] }}"
    )


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
