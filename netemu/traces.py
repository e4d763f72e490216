"""Time-varying link capacity, read from trace files.

A `RateTrace` is a repeating schedule of delivery opportunities: instants at which the bottleneck
may carry one packet of `packet_bytes` (1500) bytes, the model of mahimahi and of the cellular
traces it ships. Two file formats load into it. mahimahi: one integer per line, a timestamp in ms
from the start of the trace; each line is one opportunity, a timestamp repeated k times is k packets
in that millisecond, and the trace repeats with a period equal to its last timestamp. CSV: rows of
`seconds,Mbit/s` (an optional header line, `#` comments); each row's rate holds until the next row,
the last row for as long as the gap before it (one second when there is only one row), and the rate
is turned into opportunities by integrating it: the k-th opportunity falls where the integral
reaches k packets, as mahimahi's own trace tools do (with packets sized so that each period
carries exactly its bytes). Times in the API are seconds from the start of
the trace; they may run past the period (the trace repeats).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.errors import SplitInferError

PACKET_BYTES = 1500


@dataclass(frozen=True, eq=False)
class RateTrace:
    """Delivery opportunities over one period, repeated forever.

    `opportunities_ms` is sorted and lies in [0, period_ms]; the g-th opportunity of the endless
    trace (0-based) is at `(g // n) * period_ms + opportunities_ms[g % n]`.
    """

    opportunities_ms: np.ndarray
    period_ms: float
    source: str = ""
    # 1500 for mahimahi traces; CSV traces use a size near it that divides each period exactly.
    packet_bytes: float = PACKET_BYTES

    def __post_init__(self) -> None:
        where = f"trace {self.source!r}" if self.source else "trace"
        times = np.asarray(self.opportunities_ms, dtype=np.float64)
        if times.ndim != 1 or times.size == 0:
            raise SplitInferError(f"{where} has no delivery opportunities")
        if not self.period_ms > 0:
            raise SplitInferError(f"{where}: period_ms must be positive, got {self.period_ms}")
        if times[0] < 0 or times[-1] > self.period_ms or np.any(np.diff(times) < 0):
            raise SplitInferError(f"{where}: opportunities must be sorted within [0, {self.period_ms}] ms")
        if not self.packet_bytes > 0:
            raise SplitInferError(f"{where}: packet_bytes must be positive, got {self.packet_bytes}")
        # A trace is a value: nobody may edit the schedule a running link reads.
        times = times.copy()
        times.flags.writeable = False
        object.__setattr__(self, "opportunities_ms", times)

    @property
    def duration_s(self) -> float:
        """One period, after which the trace repeats."""
        return self.period_ms / 1e3

    @property
    def mean_rate_bps(self) -> float:
        return len(self.opportunities_ms) * self.packet_bytes * 8 / self.duration_s

    def count_until(self, t_s: float) -> int:
        """Opportunities at times ≤ t_s (from the start, over every repetition)."""
        if t_s < 0:
            return 0
        t_ms = t_s * 1e3
        cycle = math.floor(t_ms / self.period_ms)
        offset = t_ms - cycle * self.period_ms
        return cycle * len(self.opportunities_ms) + int(np.searchsorted(self.opportunities_ms, offset, side="right"))

    def opportunity_s(self, index: int) -> float:
        """Time of the index-th opportunity (0-based) of the endless trace."""
        cycle, within = divmod(index, len(self.opportunities_ms))
        return (cycle * self.period_ms + float(self.opportunities_ms[within])) / 1e3

    def bytes_between(self, start_s: float, end_s: float) -> float:
        """Capacity of the opportunities in (start_s, end_s], in bytes."""
        if end_s <= start_s:
            return 0.0
        return (self.count_until(end_s) - self.count_until(start_s)) * self.packet_bytes

    def next_opportunity_s(self, after_s: float, n: int = 1) -> float:
        """Time of the n-th opportunity strictly after `after_s`."""
        if n < 1:
            raise SplitInferError(f"n must be at least 1, got {n}")
        return self.opportunity_s(self.count_until(after_s) + n - 1)

    def rate_bps_at(self, t_s: float, window_s: float = 1.0) -> float:
        """Mean rate over [t_s, t_s + window_s): what the link carries there when kept busy."""
        if not window_s > 0:
            raise SplitInferError(f"window_s must be positive, got {window_s}")
        # (t - ε, t + w - ε] ≈ [t, t + w): count the opportunities that fall exactly on t_s.
        epsilon = 1e-9
        return self.bytes_between(t_s - epsilon, t_s + window_s - epsilon) * 8 / window_s

    def iter_opportunities_s(self, start_s: float = 0.0, end_s: float | None = None) -> Iterator[float]:
        """Opportunity times in [start_s, end_s) (endless when end_s is None), in order."""
        index = self.count_until(start_s - 1e-12)
        while True:
            t = self.opportunity_s(index)
            if end_s is not None and t >= end_s:
                return
            yield t
            index += 1

    @classmethod
    def from_rates(cls, steps: Sequence[tuple[float, float]], *, period_s: float, source: str = "") -> RateTrace:
        """A trace from (start seconds, bit/s) steps: each rate holds until the next step's start,
        the last until period_s. Opportunities fall where the integral reaches each whole packet."""
        where = f"trace {source!r}" if source else "trace"
        starts = [float(s) for s, _ in steps]
        rates = [float(r) for _, r in steps]
        if not steps or starts[0] != 0.0:
            raise SplitInferError(f"{where}: the first step must start at 0 s, got {starts[:1]}")
        if any(b <= a for a, b in zip(starts, starts[1:])) or period_s <= starts[-1]:
            raise SplitInferError(f"{where}: step starts must increase and lie before the period {period_s} s")
        if any(r < 0 or not math.isfinite(r) for r in rates):
            raise SplitInferError(f"{where}: rates must be finite and non-negative, got {rates}")
        ends = starts[1:] + [period_s]
        totals = np.cumsum([r / 8 * (e - s) for s, e, r in zip(starts, ends, rates)])  # bytes by each step's end
        if totals[-1] <= 0:
            raise SplitInferError(f"{where} carries nothing: every rate is 0")
        # Whole packets per period, each a little more or less than 1500 bytes, so that the
        # trace carries exactly the bytes its rates say (a remainder would be lost every period).
        packets = max(1, round(totals[-1] / PACKET_BYTES))
        packet_bytes = totals[-1] / packets
        marks = np.arange(1, packets + 1) * packet_bytes
        step = np.minimum(np.searchsorted(totals, marks - 1e-9 * packet_bytes), len(steps) - 1)
        before = np.concatenate([[0.0], totals[:-1]])[step]
        speed = np.asarray(rates)[step] / 8
        offsets = np.divide(marks - before, speed, out=np.zeros_like(marks), where=speed > 0)
        opportunities = np.minimum(np.asarray(starts)[step] + offsets, period_s) * 1e3
        return cls(np.maximum.accumulate(opportunities), period_s * 1e3, source, packet_bytes)


def splice(parts: Sequence[tuple[RateTrace, float, float]], *, source: str = "") -> RateTrace:
    """One trace from pieces of others, end to end: each part is (trace, start s, length s), the
    trace's opportunities in [start, start + length) (repeating it if needed). A device that moves
    between networks (LTE, then 3G, then LTE again) meets such a link."""
    if not parts:
        raise SplitInferError("splice needs at least one (trace, start, length) part")
    pieces, offset_s = [], 0.0
    for trace, start_s, length_s in parts:
        if not (start_s >= 0 and length_s > 0):
            raise SplitInferError(
                f"splice part of {trace.source!r}: start {start_s!r} s must be ≥ 0 and length {length_s!r} s > 0"
            )
        times = np.fromiter(trace.iter_opportunities_s(start_s, start_s + length_s), dtype=np.float64)
        pieces.append((times - start_s + offset_s) * 1e3)
        offset_s += length_s
    packet_bytes = {trace.packet_bytes for trace, _, _ in parts}
    if len(packet_bytes) != 1:
        raise SplitInferError(f"splice parts have different packet sizes {sorted(packet_bytes)}")
    return RateTrace(np.concatenate(pieces), offset_s * 1e3, source, packet_bytes.pop())


def scaled(trace: RateTrace, factor: float, *, source: str = "") -> RateTrace:
    """`trace` with its rate multiplied by `factor` and its shape kept (its stalls stay where they
    are): opportunity i becomes floor((i + 1)·factor) − floor(i·factor) opportunities at the same
    moment, so the first i of them carry floor(i·factor) packets: a faster or a slower network
    moving the same way."""
    if not (math.isfinite(factor) and factor > 0):
        raise SplitInferError(f"a trace's rate scale must be a positive number, got {factor!r}")
    index = np.arange(trace.opportunities_ms.size + 1)
    counts = np.diff(np.floor(index * factor).astype(np.int64))
    times = np.repeat(trace.opportunities_ms, counts)
    if times.size == 0:
        raise SplitInferError(f"scaling {trace.source!r} by {factor:g} leaves no delivery opportunity")
    return RateTrace(times, trace.period_ms, source or trace.source, trace.packet_bytes)


def save_mahimahi(trace: RateTrace, path: str | Path) -> Path:
    """Writes one period of `trace` in mahimahi's format (whole milliseconds; the last line is the
    period, so that the file repeats as the trace does)."""
    if trace.packet_bytes != PACKET_BYTES:
        raise SplitInferError(
            f"mahimahi traces carry {PACKET_BYTES}-byte packets; this one's are {trace.packet_bytes:g} bytes"
        )
    times = np.floor(trace.opportunities_ms).astype(np.int64)
    # The period is the last timestamp in mahimahi's format; one opportunity there marks it.
    lines = [*map(str, times), str(int(round(trace.period_ms)))]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def load_trace(path: str | Path) -> RateTrace:
    """A `.csv` file as `seconds,Mbit/s`; any other file as a mahimahi trace."""
    path = Path(path)
    if path.is_dir():
        raise SplitInferError(f"trace {str(path)!r} is a directory; give one trace file in it")
    if not path.is_file():
        raise SplitInferError(f"trace {str(path)!r} does not exist")
    return load_csv(path) if path.suffix.lower() == ".csv" else load_mahimahi(path)


def load_mahimahi(path: str | Path) -> RateTrace:
    path = Path(path)
    times: list[int] = []
    for number, line in enumerate(_lines(path), 1):
        text = line.strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            raise SplitInferError(
                f"trace {str(path)!r} line {number}: {text!r} is not a timestamp in ms "
                "(mahimahi format: one integer per line)"
            ) from None
        if value < 0:
            raise SplitInferError(f"trace {str(path)!r} line {number}: timestamp {value} is negative")
        if times and value < times[-1]:
            raise SplitInferError(
                f"trace {str(path)!r} line {number}: timestamp {value} is before the previous one, {times[-1]}"
            )
        times.append(value)
    if not times:
        raise SplitInferError(f"trace {str(path)!r} is empty")
    if times[-1] == 0:
        raise SplitInferError(f"trace {str(path)!r} lasts 0 ms: its last timestamp sets the period")
    return RateTrace(np.asarray(times, dtype=np.float64), float(times[-1]), str(path))


def load_csv(path: str | Path) -> RateTrace:
    path = Path(path)
    rows: list[tuple[float, float, int]] = []
    header_allowed = True
    for number, line in enumerate(_lines(path), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        cells = [cell.strip() for cell in text.split(",")]
        try:
            if len(cells) != 2:
                raise ValueError
            seconds, mbit = float(cells[0]), float(cells[1])
        except ValueError:
            if header_allowed and len(cells) == 2 and not _numeric(cells[0]):
                header_allowed = False
                continue
            raise SplitInferError(f"trace {str(path)!r} line {number}: {text!r} is not `seconds,Mbit/s`") from None
        header_allowed = False
        if not (math.isfinite(seconds) and math.isfinite(mbit)) or mbit < 0:
            raise SplitInferError(
                f"trace {str(path)!r} line {number}: rate {cells[1]!r} Mbit/s must be a non-negative number"
            )
        if rows and seconds <= rows[-1][0]:
            raise SplitInferError(
                f"trace {str(path)!r} line {number}: time {cells[0]!r} s is not after the previous row's {rows[-1][0]:g} s"
            )
        rows.append((seconds, mbit, number))
    if not rows:
        raise SplitInferError(f"trace {str(path)!r} has no `seconds,Mbit/s` rows")
    origin = rows[0][0]
    starts = [seconds - origin for seconds, _, _ in rows]
    last_step = starts[-1] - starts[-2] if len(starts) > 1 else 1.0
    return RateTrace.from_rates(
        [(start, mbit * 1e6) for start, (_, mbit, _) in zip(starts, rows)],
        period_s=starts[-1] + last_step,
        source=str(path),
    )


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise SplitInferError(f"trace {str(path)!r} cannot be read: {err.strerror}") from err
    except UnicodeDecodeError:
        raise SplitInferError(f"trace {str(path)!r} is not a text file") from None
