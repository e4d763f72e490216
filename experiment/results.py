"""One row per request: the record the runner writes to results.csv and the plots read back (and,
with `parquet = true` in the config, to results.parquet as well: typed columns for pandas, polars
or DuckDB; needs pyarrow).

A request that failed still has a row: its `error` says why and its timings are empty (NaN), so
every request of every cell is accounted for.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from protos.errors import SplitInferError

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
META_JSON = "meta.json"


@dataclass(frozen=True)
class RequestRecord:
    # Seconds since the cell's link started (trace time for a trace condition), and the Unix time.
    t_s: float
    unix_time: float
    model: str
    policy: str
    codec: str
    condition: str
    cut: str
    head_size: int
    request: int
    sample: str
    bytes_sent: int
    request_bytes: int
    response_bytes: int
    head_ms: float
    encode_ms: float
    network_ms: float
    decode_ms: float
    tail_ms: float
    total_ms: float
    # Top-1 class of the split answer equals the unsplit model's (on this machine, fp32).
    agree: bool
    # The uplink rate the link offered when the request started (a trace's mean over the next 1 s).
    rate_mbps: float
    # The planner's prediction for this cell's cut under the condition's planning rate.
    predicted_ms: float
    error: str = ""
    # The codec the request was sent with ("-": nothing sent); on the link this request met
    # (experiment.oracle), the per-request oracle's cut and predicted latency over the adaptive
    # bundle's choices, and the bound's over every cut; the adaptive runtime's bandwidth estimate
    # when it chose the cut (NaN for the other policies).
    wire_codec: str = ""
    oracle_cut: str = ""
    oracle_ms: float = math.nan
    estimate_mbps: float = math.nan
    # A raced request's first answer: "server" or "device" ("" when the request did not race).
    winner: str = ""
    # The rest of the request's stages (edge_runtime.results.RequestTiming), so that head, encode,
    # network, decode, queue, tail, outputs and other add up to total_ms: the server's queue wait,
    # the outputs' encoding there and decoding here, and what is left (building the request, retries).
    queue_ms: float = math.nan
    outputs_ms: float = math.nan
    other_ms: float = math.nan
    bound_cut: str = ""
    bound_ms: float = math.nan

    @property
    def cell(self) -> tuple[str, str, str, str]:
        return (self.model, self.policy, self.codec, self.condition)


FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
_OPTIONAL = {
    "wire_codec",
    "oracle_cut",
    "oracle_ms",
    "estimate_mbps",
    "winner",
    "queue_ms",
    "outputs_ms",
    "other_ms",
    "bound_cut",
    "bound_ms",
}
_TYPES = {f.name: f.type for f in dataclasses.fields(RequestRecord)}


class ResultsWriter:
    """Appends records to results.csv as they come, so an interrupted run keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        self._writer.writeheader()

    def write(self, record: RequestRecord) -> None:
        self._writer.writerow(dataclasses.asdict(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_results(path: str | Path) -> list[RequestRecord]:
    path = Path(path)
    if not path.is_file():
        raise SplitInferError(f"results {str(path)!r} do not exist")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        # Columns added later (with defaults) may be absent from older results.
        missing = [name for name in FIELDS if name not in (reader.fieldnames or ()) and name not in _OPTIONAL]
        if missing:
            raise SplitInferError(
                f"{path}: columns {missing} are missing; not a results.csv of `splitinfer experiment`"
            )
        # Results written before the bound had its own column ranged their "oracle" over every
        # cut: it is the bound, and the oracle over the bundle's choices was not recorded.
        renamed = (
            {"oracle_cut": "bound_cut", "oracle_ms": "bound_ms"} if "bound_ms" not in (reader.fieldnames or ()) else {}
        )
        return [
            _record({renamed.get(k, k): v for k, v in row.items()}, path, number)
            for number, row in enumerate(reader, 2)
        ]


def _record(row: dict[str, str], path: Path, line: int) -> RequestRecord:
    values: dict[str, object] = {}
    for name in FIELDS:
        if name not in row:
            continue
        text, kind = row[name], _TYPES[name]
        try:
            if kind == "bool":
                values[name] = text == "True"
            elif kind == "int":
                values[name] = int(text)
            elif kind == "float":
                values[name] = float(text) if text else math.nan
            else:
                values[name] = text
        except ValueError:
            raise SplitInferError(f"{path} line {line}: {name} {text!r} is not a {kind}") from None
    return RequestRecord(**values)  # type: ignore[arg-type]


def parquet_unavailable_reason() -> str | None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "pyarrow is not installed (pip install pyarrow)"
    return None


def write_parquet(records: Iterable[RequestRecord], path: Path) -> Path:
    """The records as one Parquet table, a column per field with its type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
    rows = [dataclasses.asdict(r) for r in records]
    schema = pa.schema([(name, types[_TYPES[name]]) for name in FIELDS])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def ok(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    """The requests that got a result."""
    return [r for r in records if not r.error]
