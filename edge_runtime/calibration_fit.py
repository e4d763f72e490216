"""Fitting a DeviceProfile's kernel costs to the calibration suite's measurements (edge_runtime.
calibration times them), with numpy alone.

The fit: kernel time = coefficients(kind) · features (FEATURES: fixed cost, MACs, bytes in, bytes
out, weight bytes), plus a cold start per kind, paid once by a run that has any kernel of that
kind (after an idle gap its code and tables are cold; a network of eighty Muls pays it once), all
non-negative, minimising *relative* squared error (each row weighted by 1/its time), jointly over
the kinds a benchmark runs (chains run several, and tell per-kernel from per-run costs apart).
Kinds of elementwise kernel the suite does not cover are priced by `other`, fitted on every
elementwise benchmark.
"""

from __future__ import annotations

import statistics

import numpy as np

# Kinds whose benchmarks also fit the fallback for elementwise kinds the suite does not cover.
_ELEMENTWISE = {
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "Tanh",
    "LeakyRelu",
    "HardSwish",
    "Add",
    "Mul",
    "Sub",
    "Div",
    "BatchNormalization",
    "Transpose",
}


# Relative errors of benchmarks faster than this count as if they took this long: after an idle
# gap a run's time varies by tens of µs, so a tiny benchmark's relative error is mostly noise.
_FLOOR_MS = 0.05


def nnls(a: np.ndarray, b: np.ndarray, *, max_iterations: int = 500) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    rows, cols = a.shape
    x = np.zeros(cols)
    passive = np.zeros(cols, dtype=bool)
    gradient = a.T @ (b - a @ x)
    tolerance = 1e-10 * max(1.0, float(np.abs(gradient).max(initial=0.0)))
    for _ in range(max_iterations):
        if passive.all() or gradient[~passive].max(initial=-np.inf) <= tolerance:
            break
        candidates = np.where(~passive, gradient, -np.inf)
        passive[int(np.argmax(candidates))] = True
        while True:
            z = np.zeros(cols)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            blocking = passive & (z <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking] + 1e-300))
            x = x + alpha * (z - x)
            passive &= x > 1e-14
            x[~passive] = 0.0
        gradient = a.T @ (b - a @ x)
    return x


def _weighted_nnls(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (rows weighted by 1/target), columns scaled."""
    keep = np.abs(design).sum(axis=0) > 0
    solution = np.zeros(design.shape[1])
    if not keep.any() or not len(target):
        return solution
    scale = np.abs(design[:, keep]).max(axis=0)
    weights = 1.0 / np.maximum(target, _FLOOR_MS)
    solution[keep] = nnls(design[:, keep] / scale * weights[:, None], target * weights) / scale
    return solution


def kernel_sums(measured: dict[str, float], stamp_ms: float) -> tuple[float, float]:
    """(compute kernels' ms, reorders' ms) of one run by the profiler, less its cost per kernel."""
    compute = max(measured["kernel_ms"] - stamp_ms * measured["kernels"], 0.0)
    return compute, max(measured["reorder_ms"] - stamp_ms * measured.get("reorders", 0), 0.0)


def _output_cost(
    entries: list[dict],
    times: dict[str, dict[str, float]],
    kernels_ms: dict[str, tuple[float, float]],
    overhead_ms: float,
) -> float:
    """Milliseconds per byte a run spends outside its kernels handing its outputs over (onnxruntime
    copies them into fresh numpy arrays: ~0.2 ms per MB here, paid by every head for its cut
    tensors, which a network's inner tensors never pay): the least-squares slope through the
    origin of what a run took beyond its fixed cost and its kernels, against the bytes it returns."""
    nbytes = np.array([e["output_bytes"] for e in entries], dtype=float)
    beyond = np.array([times[e["name"]]["wall_ms"] - overhead_ms - sum(kernels_ms[e["name"]]) for e in entries])
    if not len(nbytes) or not nbytes.any():
        return 0.0
    return max(float(nbytes @ beyond / (nbytes @ nbytes)), 0.0)


def fit(
    manifest: dict, times: dict[str, dict[str, float]], block: int
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, dict]]:
    """(coefficients per kernel kind over the manifest's features, per-run costs, fit report)."""
    width = len(manifest["features"])
    entries = [e for e in manifest["benchmarks"] if e["name"] not in ("overhead", "probe") and e["name"] in times]
    # A run's time less the session's fixed cost (the one-op `overhead` benchmark) and less what
    # handing its outputs to the caller costs (below) is its kernels' time; the profiler says which
    # share of it the layout reorders took. The profiler adds its own cost to every kernel it times
    # (what it reports for a Relu of one float: ~10 µs here, where the Relu takes well under one),
    # removed before the shares are taken.
    stamp_ms = times["overhead"]["kernel_ms"]
    overhead_ms = times["overhead"]["wall_ms"]
    kernels_ms = {e["name"]: kernel_sums(times[e["name"]], stamp_ms) for e in entries}
    output_ms_per_byte = _output_cost(entries, times, kernels_ms, overhead_ms)
    compute_ms, reorder_ms = {}, {}
    for e in entries:
        compute, reorder = kernels_ms[e["name"]]
        share = reorder / (compute + reorder) if compute + reorder > 0 else 0.0
        total = max(times[e["name"]]["wall_ms"] - overhead_ms - output_ms_per_byte * e["output_bytes"], 0.0)
        compute_ms[e["name"]], reorder_ms[e["name"]] = total * (1 - share), total * share
    # Compute kernels: every benchmark's non-reorder kernels, jointly over the kinds they are.
    rows = [
        ({k: v for k, v in e["features"][str(block)].items() if k != "reorder"}, compute_ms[e["name"]]) for e in entries
    ]
    rows = [(kinds, ms) for kinds, ms in rows if kinds]
    coefficients, cold_ms, report = _fit_compute(rows, width)
    reorders = [
        (e["features"][str(block)]["reorder"], reorder_ms[e["name"]])
        for e in entries
        if "reorder" in e["features"][str(block)]
    ]
    if reorders:
        coefficients["reorder"], report["reorder"] = _fit_reorders(reorders)
    other = _fit_fallback(rows)
    if other is not None:
        coefficients["other"] = other
    run_costs = {
        "overhead_ms": overhead_ms,
        "output_ms_per_byte": output_ms_per_byte,
        "profiler_stamp_ms": stamp_ms,
        "cold_ms": cold_ms,
    }
    return coefficients, run_costs, report


Row = tuple[dict[str, list[float]], float]


def _fit_compute(rows: list[Row], width: int) -> tuple[dict[str, list[float]], dict[str, float], dict[str, dict]]:
    """Per kind: its features' coefficients; then a cold start paid once per run the kind appears
    in (after an idle gap its code and tables are cold): told apart from the fixed cost per
    kernel by the chains of several kernels of a kind (elementwise chains, chains of Convs)."""
    kinds = sorted({kind for used, _ in rows for kind in used})
    cold_kinds = [kind for kind in kinds if kind in _ELEMENTWISE or kind.startswith("conv_")]
    design = np.array(
        [
            [
                *(v for kind in kinds for v in used.get(kind, [0.0] * width)),
                *(float(kind in used) for kind in cold_kinds),
            ]
            for used, _ in rows
        ]
    )
    target = np.array([ms for _, ms in rows])
    solution = _weighted_nnls(design, target)
    coefficients = {kind: [float(x) for x in solution[j * width : (j + 1) * width]] for j, kind in enumerate(kinds)}
    cold_ms = {kind: float(solution[len(kinds) * width + j]) for j, kind in enumerate(cold_kinds)}
    report: dict[str, dict] = {}
    predicted = design @ solution
    for kind in kinds:
        errors = [abs(p - t) / max(t, _FLOOR_MS) for (used, t), p in zip(rows, predicted) if kind in used]
        report[kind] = {"benchmarks": len(errors), "median_rel_error": float(statistics.median(errors))}
    return coefficients, cold_ms, report


def _fit_reorders(reorders: list[tuple[list[float], float]]) -> tuple[list[float], dict]:
    """Layout reorders, timed on their own by the profiler: their coefficients and report."""
    design = np.array([f for f, _ in reorders])
    target = np.array([ms for _, ms in reorders])
    coefficients = [float(x) for x in _weighted_nnls(design, target)]
    errors = np.abs(design @ np.array(coefficients) - target) / np.maximum(target, _FLOOR_MS)
    return coefficients, {"benchmarks": len(reorders), "median_rel_error": float(np.median(errors))}


def _fit_fallback(rows: list[Row]) -> list[float] | None:
    """The fallback for elementwise kinds the suite lacks: bytes in and out, over every
    elementwise benchmark (None without any)."""
    simple = [
        (next(iter(used.values())), ms) for used, ms in rows if len(used) == 1 and next(iter(used)) in _ELEMENTWISE
    ]
    if not simple:
        return None
    design = np.array([f for f, _ in simple])[:, [0, 2, 3]]
    other = _weighted_nnls(design, np.array([ms for _, ms in simple]))
    return [float(other[0]), 0.0, float(other[1]), float(other[2]), 0.0]
