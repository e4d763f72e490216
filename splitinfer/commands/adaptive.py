"""`splitinfer export-adaptive MODEL --profile P --out DIR`: one bundle carrying every (cut, codec)
predicted the fastest somewhere in the planned uplink range (--min-rate to --max-rate; by default
a CAT1 to a fast Wi-Fi link), for a device that moves its cut as its network changes (`splitinfer run` and EdgeClient choose per request). The work is in
splitter.export.adaptive; this module parses and prints."""

from __future__ import annotations

from pathlib import Path

import typer

from splitinfer.console import console, user_errors
from splitinfer.options import (
    MAX_ERROR_HELP,
    METRIC_HELP,
    MIN_AGREEMENT_HELP,
    PREPROCESS_HELP,
    SAMPLES_HELP,
    bundle_dir,
    checked_codecs,
    checked_metric,
    checked_preprocess,
    checked_samples_path,
    error_budget,
    parse_input_shape,
)

commands = typer.Typer()


@commands.command("export-adaptive")
def export_adaptive(
    model: str = typer.Argument(..., metavar="MODEL", help="registered model name or path to an .onnx file"),
    out: Path = typer.Option(..., help="bundle directory to write"),
    profile_path: Path = typer.Option(
        ..., "--profile", help="a profile of MODEL (`splitinfer profile`), with the device's slowdown"
    ),
    rtt: str = typer.Option(
        "40ms", help="round-trip time the cuts are chosen for (the device measures its own at run time)"
    ),
    codecs: str = typer.Option(
        "int8+zstd", help="comma-separated codecs the device may choose among (each must be in the profile)"
    ),
    min_rate: str = typer.Option("0.05mbit", help="the slowest uplink the device is planned for"),
    max_rate: str = typer.Option("200mbit", help="the fastest uplink the device is planned for"),
    allow_raw_input: bool = typer.Option(
        False, "--allow-raw-input", help="let the raw input leave the device (the `input` cut)"
    ),
    input_shape: str | None = typer.Option(None, help="e.g. 1,3,224,224"),
    max_error: str | None = typer.Option(None, help=MAX_ERROR_HELP),
    min_agreement: str | None = typer.Option(None, help=MIN_AGREEMENT_HELP),
    samples: Path | None = typer.Option(None, help=SAMPLES_HELP),
    metric: str | None = typer.Option(None, help=METRIC_HELP),
    preprocess: str | None = typer.Option(None, help=PREPROCESS_HELP),
    force: bool = typer.Option(False, "--force", help="replace a bundle --out holds already"),
) -> None:
    """Export a multi-cut bundle, for a device that moves its cut as its network changes.

    The head is stored in segments (each weight once), with a tail per cut and the decision table
    the device chooses its cut and codec with."""
    with user_errors():
        from protos.errors import SplitInferError
        from protos.units import parse_duration_ms, parse_rate_bps

        lo_bps, hi_bps = parse_rate_bps(min_rate), parse_rate_bps(max_rate)
        if lo_bps >= hi_bps:
            raise SplitInferError(f"--min-rate {min_rate!r} must be below --max-rate {max_rate!r}")
        bundle_dir(out, force)
        from splitter.export.adaptive import export_adaptive as export
        from splitter.policies import Constraints
        from splitter.profile.schema import Profile

        budget = error_budget(max_error, min_agreement)
        codec_names = checked_codecs(codecs)
        samples = checked_samples_path(samples)
        bundle, _ = export(
            model,
            out,
            Profile.load(profile_path),
            rtt_ms=parse_duration_ms(rtt),
            codecs=codec_names,
            constraints=Constraints(allow_raw_input=allow_raw_input),
            lo_bps=lo_bps,
            hi_bps=hi_bps,
            input_shape=parse_input_shape(input_shape),
            min_agreement=1.0 - budget if budget is not None else 1.0,
            max_error=budget,
            samples_path=samples,
            metric=checked_metric(metric),
            preprocess=checked_preprocess(preprocess),
        )
        manifest = bundle.manifest
        console.print(
            f"bundle {out}: {len(manifest.cuts)} cuts ({', '.join(c.cut_name for c in manifest.cuts)}), "
            f"{len(manifest.segments)} head segments, {len(manifest.decisions['entries'])} (cut, codec) choices, hash {manifest.bundle_hash[:12]}",
            highlight=False,
        )
        for codecs_chosen_among, segments in manifest.decisions["switching_points"].items():
            console.print(
                f"switching points ({codecs_chosen_among}, RTT {manifest.decisions['planning_rtt_ms']:g} ms):",
                highlight=False,
            )
            for lo, hi, cut, codec in segments:
                console.print(f"  {lo / 1e6:9.3f} – {hi / 1e6:9.3f} Mbit/s  {cut} ({codec})", highlight=False)
