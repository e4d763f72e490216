"""`splitinfer profile`, `plan` and `export`: the offline pipeline, each command parsing its
arguments and calling one function of splitter.pipeline or splitter.cost."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from splitinfer.console import console, user_errors
from splitinfer.options import (
    MAX_ERROR_HELP,
    METRIC_HELP,
    MIN_AGREEMENT_HELP,
    NETWORK_HELP,
    PREPROCESS_HELP,
    SAMPLES_HELP,
    at_least,
    bundle_dir,
    checked_metric,
    checked_preprocess,
    checked_samples_path,
    error_budget,
    output_file,
    parse_input_shape,
    positive,
)

commands = typer.Typer()


@commands.command()
def profile(
    model: str = typer.Argument(..., metavar="MODEL", help="registered model name or path to an .onnx file"),
    out: Path = typer.Option(Path("profile.json"), help="where to write the profile"),
    input_shape: str | None = typer.Option(None, help="e.g. 1,3,224,224 (needed when the model's is symbolic)"),
    edge_threads: int = typer.Option(1, callback=at_least(1), help="onnxruntime threads standing for the device"),
    server_threads: int | None = typer.Option(
        None, callback=at_least(1), help="onnxruntime threads of the server (default: all cores)"
    ),
    edge_slowdown: float = typer.Option(
        1.0, callback=positive, help="how many times slower the device is than this machine"
    ),
    repeats: int = typer.Option(10, callback=at_least(1), help="timed runs per measurement (the median is kept)"),
    warmup: int = typer.Option(2, callback=at_least(0), help="untimed runs before timing"),
    idle_gap_ms: float = typer.Option(
        2.0, callback=at_least(0), help="idle time before each timed run, as before a request"
    ),
    edge_device: Path | None = typer.Option(
        None, help="a DeviceProfile (`splitinfer calibrate`): predict head times for it"
    ),
    server_device: Path | None = typer.Option(None, help="a DeviceProfile: predict tail times for it"),
    samples: Path | None = typer.Option(None, help=SAMPLES_HELP),
    metric: str | None = typer.Option(None, help=METRIC_HELP),
    preprocess: str | None = typer.Option(None, help=PREPROCESS_HELP),
    max_cuts: int | None = typer.Option(
        None,
        callback=at_least(1),
        help="profile only N cuts, evenly spread by head size, and the two baselines (for models of hundreds of ops)",
    ),
) -> None:
    """Measure every cut of MODEL and the task agreement of every (cut, codec); write a profile.

    With --edge-device / --server-device, head and tail times are predicted from DeviceProfiles
    (`splitinfer calibrate`) instead of measured here."""
    with user_errors():
        output_file(out)
        samples = checked_samples_path(samples)
        checked_metric(metric)
        checked_preprocess(preprocess)
        if edge_device is not None or server_device is not None:
            from protos.device_profile import DeviceProfile
            from splitter.profile.predict.device import predicted_profile
            from splitter.profile.timing import ProfileSettings
            from splitter.sources import load_source

            settings = ProfileSettings(
                edge_threads=edge_threads,
                edge_slowdown=edge_slowdown,
                repeats=repeats,
                warmup=warmup,
                idle_gap_ms=idle_gap_ms,
            )
            if server_threads is not None:
                settings = dataclasses.replace(settings, server_threads=server_threads)
            edge = DeviceProfile.load(edge_device) if edge_device is not None else None
            server = DeviceProfile.load(server_device) if server_device is not None else None
            source = load_source(model, input_shape=parse_input_shape(input_shape))
            result = predicted_profile(source, edge=edge, server=server, settings=settings, progress=True)
        else:
            from splitter.pipeline import profile_model

            result = profile_model(
                model,
                input_shape=parse_input_shape(input_shape),
                edge_threads=edge_threads,
                server_threads=server_threads,
                edge_slowdown=edge_slowdown,
                repeats=repeats,
                warmup=warmup,
                idle_gap_ms=idle_gap_ms,
                progress=True,
                samples=samples,
                metric=metric,
                preprocess=preprocess,
                max_cuts=max_cuts,
            )
        result.save(out)
        of = f" of {result.model_cuts} (spread by head size)" if result.model_cuts else ""
        console.print(f"profiled {len(result.cuts)}{of} cuts of {result.model_id} → {out}")
        if result.metric:
            evaluation = result.samples["evaluation"]
            console.print(f"agreement ({result.metric}) measured on {evaluation['description']}", highlight=False)
        for side, device in result.predicted_from.items():
            console.print(f"{side} times predicted from {device}", highlight=False)


@commands.command()
def plan(
    profile_path: Path = typer.Argument(..., metavar="PROFILE", help="a profile written by `splitinfer profile`"),
    network: str = typer.Option("4g", help=NETWORK_HELP),
    bandwidth: str | None = typer.Option(None, help="uplink rate, e.g. 5.85mbit, 300kbit, 2MB/s"),
    downlink_bandwidth: str | None = typer.Option(
        None, help="downlink rate, for the reply (default: the preset's; with --bandwidth, the same)"
    ),
    rtt: str | None = typer.Option(None, help="round-trip time, e.g. 40ms"),
    codec: str | None = typer.Option(
        None, help="fp32|fp16|int8|int8ch|int4ch, optionally +zstd, or auto (default: int8+zstd, auto with --max-error)"
    ),
    max_error: str | None = typer.Option(None, help=MAX_ERROR_HELP),
    min_agreement: str | None = typer.Option(None, help=MIN_AGREEMENT_HELP),
    allow_random_samples: bool = typer.Option(
        False,
        "--allow-random-samples",
        help="plan lossy codecs on a profile whose agreement was measured on random inputs",
    ),
    policy: str = typer.Option("neurosurgeon", help="a registered policy or plug-in (see `splitinfer policies`)"),
    allow_raw_input: bool = typer.Option(
        False, "--allow-raw-input", help="allow cuts that send the raw input off the device"
    ),
    min_head_ops: int = typer.Option(0, callback=at_least(0), help="ops that must run on the device"),
    split_only: bool = typer.Option(False, "--split-only", help="the server must run part of the model"),
    deadline: str | None = typer.Option(None, help="latency deadline, e.g. 80ms: no slower cut is chosen"),
    max_head_memory: str | None = typer.Option(
        None, help="device memory for the head (weights + activations), e.g. 4MB"
    ),
    sweep: bool = typer.Option(
        False, "--sweep", help="also sweep the bandwidth and print where the chosen cut changes"
    ),
    all_cuts: bool = typer.Option(
        False, "--all", help="print every cut (default: the 10 fastest, the chosen one and the baselines)"
    ),
) -> None:
    """Print the predicted latency of every cut for a network, and the chosen cut."""
    with user_errors():
        from protos.units import parse_duration_ms, parse_size_bytes
        from splitinfer.tables import plan_excerpt, plan_table
        from splitter.cost.network import resolve_network
        from splitter.cost.plan import AUTO_CODEC, DEFAULT_CODEC
        from splitter.cost.plan import plan as make_plan
        from splitter.policies import Constraints
        from splitter.profile.schema import Profile

        constraints = Constraints(
            allow_raw_input=allow_raw_input,
            min_head_ops=min_head_ops,
            allow_edge_only=not split_only,
            deadline_ms=parse_duration_ms(deadline) if deadline is not None else None,
            max_head_memory_bytes=parse_size_bytes(max_head_memory) if max_head_memory is not None else None,
        )
        budget = error_budget(max_error, min_agreement)
        codec = codec or (AUTO_CODEC if budget is not None else DEFAULT_CODEC)
        measured = Profile.load(profile_path)
        for side, device in measured.predicted_from.items():
            console.print(f"{side} times predicted from {device}", highlight=False)
        net = resolve_network(network, bandwidth, rtt, downlink_bandwidth)
        result = make_plan(
            measured,
            net,
            codec=codec,
            policy=policy,
            constraints=constraints,
            max_error=budget,
            allow_random_samples=allow_random_samples,
        )
        shown = None if all_cuts else plan_excerpt(result)
        console.print(plan_table(result, shown))
        total = len(result.best_per_cut() if codec == AUTO_CODEC else result.costs)
        if shown is not None and len(shown) < total:
            console.print(f"{len(shown)} of {total} cuts shown; --all prints every one", highlight=False)
        chosen = result.chosen
        line = (
            f"chosen: {chosen.name}{f' with {chosen.codec}' if codec == AUTO_CODEC else ''} — {chosen.total_ms:.1f} ms predicted, {chosen.frames_per_s:.1f} frames/s pipelined, "
            f"{chosen.energy_mj:.1f} mJ on the device, head memory {chosen.head_memory_bytes / 1e6:.2f} MB"
        )
        for name, label in (("output", "all on device"), ("input", "all on server")):
            baseline = result.baseline(name)
            if baseline is not None:
                line += f"; {label} {baseline.total_ms:.1f} ms"
        console.print(line, highlight=False)
        if sweep:
            from splitter.cost.sweep import sweep_bandwidth

            points = sweep_bandwidth(measured, net.rtt_ms, codec=codec, policy=policy, constraints=constraints)
            console.print(f"switching points ({policy}, RTT {net.rtt_ms:g} ms, {codec}):", highlight=False)
            for segment in points:
                console.print(f"  {segment.describe()}", highlight=False)


@commands.command()
def export(
    model: str = typer.Argument(..., metavar="MODEL", help="registered model name or path to an .onnx file"),
    out: Path = typer.Option(..., help="bundle directory to write"),
    cut: str = typer.Option("auto", help="'auto' (plan from a profile) or a cut name / module path"),
    codec: str = typer.Option(
        "int8+zstd", help="codec the bundle is verified with and sends by default; auto: the plan's (with --cut auto)"
    ),
    profile_path: Path | None = typer.Option(
        None, "--profile", exists=True, dir_okay=False, help="profile for --cut auto (default: profile now)"
    ),
    network: str = typer.Option("4g", help=NETWORK_HELP),
    bandwidth: str | None = typer.Option(None, help="uplink rate for --cut auto"),
    downlink_bandwidth: str | None = typer.Option(
        None, help="downlink rate for --cut auto (default: the preset's; with --bandwidth, the same)"
    ),
    rtt: str | None = typer.Option(None, help="round-trip time for --cut auto"),
    input_shape: str | None = typer.Option(None, help="e.g. 1,3,224,224"),
    max_error: str | None = typer.Option(None, help=MAX_ERROR_HELP),
    min_agreement: str | None = typer.Option(None, help=MIN_AGREEMENT_HELP),
    samples: Path | None = typer.Option(None, help=SAMPLES_HELP),
    metric: str | None = typer.Option(None, help=METRIC_HELP),
    allow_random_samples: bool = typer.Option(
        False, "--allow-random-samples", help="verify lossy codecs on random inputs (marked: agreement not meaningful)"
    ),
    preprocess: str | None = typer.Option(None, help=PREPROCESS_HELP),
    quantize_head: bool = typer.Option(
        False, "--quantize-head", help="int8 head (static, calibrated on samples never used to verify)"
    ),
    head_format: str = typer.Option("onnx", help="onnx, or ort (ONNX Runtime's mobile format)"),
    result: str = typer.Option(
        "", help="the outputs' default form on the wire: a codec (fp16+zstd), top-k (top5) or both (top5:fp16)"
    ),
    sign_key: Path | None = typer.Option(
        None, help="Ed25519 private key (PEM, `splitinfer signing-key`): sign the bundle"
    ),
    encrypt_head: Path | None = typer.Option(
        None,
        help="AES-256 key file (64 hex digits; a new one is written when it does not exist): encrypt the head"
        " (head.onnx.enc); the device needs the key (run --head-key or SPLITINFER_HEAD_KEY)",
    ),
    bundle_version: int = typer.Option(
        0,
        callback=at_least(0),
        help="the bundle's version (0: unversioned): a server advertises its highest, devices update to it"
        " (run --update-cache)",
    ),
    force: bool = typer.Option(False, "--force", help="replace a bundle --out holds already"),
) -> None:
    """Cut MODEL into head.onnx and tail.onnx, verify head∘tail, write the bundle."""
    with user_errors():
        bundle_dir(out, force)
        from protos.head_encryption import encrypt_bundle_head, export_key
        from protos.result_form import ResultForm
        from protos.signing import load_signing_key, sign_bundle
        from splitter.cost.network import resolve_network
        from splitter.pipeline import export_model

        # Read before the export, which takes a while, so a bad key fails at once.
        signer = load_signing_key(sign_key) if sign_key is not None else None
        head_key, new_key = export_key(encrypt_head) if encrypt_head is not None else (None, False)
        budget = error_budget(max_error, min_agreement)
        samples = checked_samples_path(samples)
        if result:
            ResultForm.parse(result)

        bundle, check = export_model(
            model,
            out,
            cut=cut,
            codec=codec,
            profile_path=profile_path,
            network=resolve_network(network, bandwidth, rtt, downlink_bandwidth),
            input_shape=parse_input_shape(input_shape),
            max_error=budget,
            min_agreement=1.0 - budget if budget is not None else 1.0,
            samples_path=samples,
            metric=metric,
            allow_random_samples=allow_random_samples,
            preprocess=preprocess,
            quantize_head=quantize_head,
            head_format=head_format,
            result=result,
            version=bundle_version,
        )
        if head_key is not None:
            # Before signing, which covers the manifest that now names the encrypted head.
            bundle = encrypt_bundle_head(out, head_key)
        m = bundle.manifest
        console.print(
            f"bundle {out}: cut {m.cut_name!r} ({len(m.cut)} tensor(s)), codec {m.codec}, hash {m.bundle_hash[:12]}"
            + (f", version {m.version}" if m.version else "")
        )
        console.print(
            f"verified on {len(check.samples)} samples: max |Δ| fp32 {check.max_abs_diff_fp32:.2e}, "
            f"{check.codec} {check.max_abs_diff_codec:.2e}, top-1 agreement {check.top1_agreement_codec:.0%}",
            highlight=False,
        )
        if check.agreement is not None:
            record = m.verification.get("sample_sets", {}).get("evaluation", {})
            console.print(
                f"{check.metric} agreement with {check.codec}: {check.agreement['passed']}/{check.agreement['count']} "
                f"(95% lower bound {check.agreement['lower']:.1%}) on {record.get('description', 'the evaluation samples')}",
                highlight=False,
            )
        quantized = m.verification.get("quantized_head")
        if quantized:
            console.print(
                f"int8 head: {quantized['head_ms_fp32']:.2f} → {quantized['head_ms_int8']:.2f} ms, "
                f"{quantized['head_bytes_fp32'] / 1e6:.2f} → {quantized['head_bytes_int8'] / 1e6:.2f} MB, "
                f"top-1 agreement {quantized['top1_agreement']:.0%} of {quantized['samples']}, max |Δ| {quantized['max_abs_diff']:.2e}",
                highlight=False,
            )
        if head_key is not None:
            made = "a new key, written to" if new_key else "the key in"
            console.print(f"head encrypted with {made} {encrypt_head} → {bundle.head_path}", highlight=False)
        if signer is not None:
            console.print(f"signed with key {signer.key_id} → {sign_bundle(out, signer)}", highlight=False)
