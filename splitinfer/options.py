"""Option values the commands share: their help texts, and parsing the ones typer cannot (an input
shape, an accuracy budget given either way, a samples path checked before long work starts)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import typer

from protos.errors import SplitInferError


def in_range(low: float, high: float = math.inf, *, strictly: bool = False) -> Callable[[float | None], float | None]:
    """A callback refusing a number option outside [low, high] (or at `low`, `strictly`) while the
    command line is parsed, so the error names the flag and the value before any work; NaN and
    infinity too, which click's ranges let through (and whose messages do not name the value)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if not ((value > low if strictly else value >= low) and value <= high):
            if high < math.inf:
                rule = f"between {low:g} and {high:g}"
            else:
                rule = f"greater than {low:g}" if strictly else f"at least {low:g}"
            raise typer.BadParameter(f"{value:g} is not {rule}")
        return value

    return check


def at_least(low: float) -> Callable[[float | None], float | None]:
    return in_range(low)


positive = in_range(0, strictly=True)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise SplitInferError(f"--input-shape {text!r} is not a list of integers like 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise SplitInferError(f"--input-shape {text!r} must have positive dimensions")
    return shape


NETWORK_HELP = "network preset: cat1, 3g, 4g, wifi (--bandwidth/--rtt override it)"
MAX_ERROR_HELP = (
    "accuracy budget, e.g. 5%: a lossy (cut, codec) is admitted when the 95% lower bound of its measured task "
    "agreement is at least 1 - budget (default 10%; 1% activation error on a profile without agreement)"
)
MIN_AGREEMENT_HELP = "the same budget as an agreement, e.g. 95% (= --max-error 5%)"
SAMPLES_HELP = (
    "a folder of images (jpg/png) or a .npy/.npz of input tensors to measure agreement on (default: the model's own)"
)
METRIC_HELP = "task metric: top1, top5, rel-error:X or a plug-in (default: the model's own; required for .onnx files)"
PREPROCESS_HELP = (
    "how images become inputs: imagenet, unit (/255, no mean/std), none (samples are tensors) or a .json file"
)


def error_budget(max_error: str | None, min_agreement: str | None) -> float | None:
    """--max-error or --min-agreement (its complement) as an error budget; None when neither is given."""
    from protos.units import parse_share

    if max_error is not None and min_agreement is not None:
        raise SplitInferError(
            f"--max-error {max_error!r} and --min-agreement {min_agreement!r} say the same thing: give one"
        )
    if max_error is not None:
        return parse_share(max_error, "--max-error")
    if min_agreement is not None:
        # All samples must agree: a share of 1, which parse_share (below 1) does not take.
        if min_agreement.strip() in ("1", "1.0", "100%"):
            return 0.0
        return 1.0 - parse_share(min_agreement, "--min-agreement")
    return None


def checked_samples_path(path: Path | None) -> Path | None:
    if path is not None:
        from splitter.accuracy.samples import check_samples_path

        check_samples_path(path)
    return path


def output_file(path: Path, flag: str = "--out") -> Path:
    """`path` as a file to write: its folder must exist and it must not be a folder itself, checked
    before any long work (a profile takes a minute; failing to save it after is a minute lost)."""
    if path.is_dir():
        raise SplitInferError(f"{flag} {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise SplitInferError(f"{flag} {str(path)!r}: the directory {str(path.parent)!r} does not exist")
    return path


def output_dir(path: Path, flag: str = "--out") -> Path:
    """`path` as a directory to write into (made if missing): it must not be a file, and its
    parent, if it must be made, must not be one either."""
    if path.exists() and not path.is_dir():
        raise SplitInferError(f"{flag} {str(path)!r} is a file, not a directory")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SplitInferError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    return path


def checked_metric(metric: str | None) -> str | None:
    """`metric` if splitter.metrics knows it, checked before the model is built and measured."""
    if metric is not None:
        from splitter.metrics import create_metric

        create_metric(metric)
    return metric


def checked_preprocess(preprocess: str | None) -> str | None:
    """`preprocess` if it is a preset or a readable .json file, checked before long work; the size
    it is read at only shapes the result, which the model's own size replaces later."""
    if preprocess is not None:
        from protos.preprocess import load_preprocess

        load_preprocess(preprocess, 224)
    return preprocess


def checked_codecs(text: str) -> list[str]:
    """A comma-separated list of codecs, each one checked."""
    from protos.codec import Codec

    return [Codec.parse(c).name for c in text.split(",") if c.strip()]
