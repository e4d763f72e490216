"""`splitinfer`: the command line. Each command parses its arguments, imports its package lazily
(so the device commands `run` and `calibrate`-style tools work where torch is not installed) and
calls one function. A SplitInferError becomes exit code 2 and one line naming the bad value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from protos.errors import SplitInferError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]}
)
# Cost tables are wide; piped into a file or a CI log they would otherwise wrap at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except SplitInferError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
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
SAMPLES_HELP = "a folder of images (jpg/png) or a .npy/.npz of input tensors to measure agreement on (default: the model's own)"
METRIC_HELP = "task metric: top1, top5, rel-error:X or a plug-in (default: the model's own; required for .onnx files)"
PREPROCESS_HELP = "how images become inputs: imagenet, unit (/255, no mean/std), none (samples are tensors) or a .json file"


def _budget(max_error: Optional[str], min_agreement: Optional[str]) -> Optional[float]:
    """--max-error or --min-agreement (its complement) as an error budget; None when neither is given."""
    from protos.units import parse_share

    if max_error is not None and min_agreement is not None:
        raise SplitInferError(f"--max-error {max_error!r} and --min-agreement {min_agreement!r} say the same thing: give one")
    if max_error is not None:
        return parse_share(max_error, "--max-error")
    if min_agreement is not None:
        # All samples must agree: a share of 1, which parse_share (below 1) does not take.
        if min_agreement.strip() in ("1", "1.0", "100%"):
            return 0.0
        return 1.0 - parse_share(min_agreement, "--min-agreement")
    return None


def _samples_path(path: Optional[Path]) -> Optional[Path]:
    if path is not None:
        from splitter.accuracy.samples import check_samples_path

        check_samples_path(path)
    return path


@app.command()
def models() -> None:
    """List the models usable by name: those defined here and those shipped in installed packages."""
    from splitter.models import list_models, model_info
    from splitter.packaged import PACKAGED_MODELS

    for name in list_models():
        console.print(f"{name:20s} {model_info(name).description}", highlight=False)
    for name, packaged in PACKAGED_MODELS.items():
        console.print(f"{name:20s} {packaged.description} (ONNX from the {packaged.package} package)", highlight=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"splitinfer {version('splitinfer')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Edge-cloud split inference: profile a model, pick the cut, export head and tail, serve and run them over gRPC."""


@app.command()
def profile(
    model: str = typer.Argument(..., help="registered model name or path to an .onnx file"),
    out: Path = typer.Option(Path("profile.json"), help="where to write the profile"),
    input_shape: Optional[str] = typer.Option(None, help="e.g. 1,3,224,224 (needed when the model's is symbolic)"),
    edge_threads: int = typer.Option(1, help="onnxruntime threads standing for the device"),
    server_threads: Optional[int] = typer.Option(None, help="onnxruntime threads of the server (default: all cores)"),
    edge_slowdown: float = typer.Option(1.0, help="how many times slower the device is than this machine"),
    repeats: int = typer.Option(10, help="timed runs per measurement (the median is kept)"),
    warmup: int = typer.Option(2, help="untimed runs before timing"),
    idle_gap_ms: float = typer.Option(2.0, help="idle time before each timed run, as before a request"),
    edge_device: Optional[Path] = typer.Option(None, help="a DeviceProfile (`splitinfer calibrate`): predict head times for it"),
    server_device: Optional[Path] = typer.Option(None, help="a DeviceProfile: predict tail times for it"),
    samples: Optional[Path] = typer.Option(None, help=SAMPLES_HELP),
    metric: Optional[str] = typer.Option(None, help=METRIC_HELP),
    preprocess: Optional[str] = typer.Option(None, help=PREPROCESS_HELP),
) -> None:
    """Measure every cut candidate of MODEL (or predict its head/tail times from DeviceProfiles) and the task
    agreement of every (cut, codec), and write a profile."""
    with _user_errors():
        samples = _samples_path(samples)
        if metric is not None:
            from splitter.metrics import create_metric

            create_metric(metric)
        if edge_device is not None or server_device is not None:
            from protos.device_profile import DeviceProfile
            from splitter.profile.predict.device import predicted_profile
            from splitter.profile.timing import ProfileSettings
            from splitter.sources import load_source

            settings = ProfileSettings(edge_threads=edge_threads, edge_slowdown=edge_slowdown, repeats=repeats, warmup=warmup, idle_gap_ms=idle_gap_ms)
            if server_threads is not None:
                settings = dataclasses.replace(settings, server_threads=server_threads)
            edge = DeviceProfile.load(edge_device) if edge_device is not None else None
            server = DeviceProfile.load(server_device) if server_device is not None else None
            source = load_source(model, input_shape=_shape(input_shape))
            result = predicted_profile(source, edge=edge, server=server, settings=settings, progress=True)
        else:
            from splitter.pipeline import profile_model

            result = profile_model(
                model,
                input_shape=_shape(input_shape),
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
            )
        result.save(out)
        console.print(f"profiled {len(result.cuts)} cuts of {result.model_id} → {out}")
        if result.metric:
            evaluation = result.samples["evaluation"]
            console.print(f"agreement ({result.metric}) measured on {evaluation['description']}", highlight=False)
        for side, device in result.predicted_from.items():
            console.print(f"{side} times predicted from {device}", highlight=False)


@app.command()
def plan(
    profile_path: Path = typer.Argument(..., metavar="PROFILE", help="a profile written by `splitinfer profile`"),
    network: str = typer.Option("4g", help=NETWORK_HELP),
    bandwidth: Optional[str] = typer.Option(None, help="uplink rate, e.g. 5.85mbit, 300kbit, 2MB/s"),
    rtt: Optional[str] = typer.Option(None, help="round-trip time, e.g. 40ms"),
    codec: Optional[str] = typer.Option(
        None, help="fp32|fp16|int8|int8ch|int4ch, optionally +zstd, or auto (default: int8+zstd, auto with --max-error)"
    ),
    max_error: Optional[str] = typer.Option(None, help=MAX_ERROR_HELP),
    min_agreement: Optional[str] = typer.Option(None, help=MIN_AGREEMENT_HELP),
    allow_random_samples: bool = typer.Option(False, help="plan lossy codecs on a profile whose agreement was measured on random inputs"),
    policy: str = typer.Option("neurosurgeon", help="a registered policy or plug-in (see `splitinfer policies`)"),
    allow_raw_input: bool = typer.Option(False, help="allow cuts that send the raw input off the device"),
    min_head_ops: int = typer.Option(0, help="ops that must run on the device"),
    split_only: bool = typer.Option(False, help="the server must run part of the model"),
    deadline: Optional[str] = typer.Option(None, help="latency deadline, e.g. 80ms: no slower cut is chosen"),
    max_head_memory: Optional[str] = typer.Option(None, help="device memory for the head (weights + activations), e.g. 4MB"),
    sweep: bool = typer.Option(False, help="also sweep the bandwidth and print where the chosen cut changes"),
) -> None:
    """Print the predicted latency of every cut for a network, and the chosen cut."""
    with _user_errors():
        from splitinfer.tables import plan_table
        from protos.units import parse_size_bytes
        from splitter.cost.network import resolve_network
        from protos.units import parse_duration_ms
        from splitter.cost.plan import AUTO_CODEC, DEFAULT_CODEC
        from splitter.cost.plan import plan as make_plan
        from splitter.policies import Constraints
        from splitter.profile.schema import Profile

        power = None
        constraints = Constraints(
            allow_raw_input=allow_raw_input,
            min_head_ops=min_head_ops,
            allow_edge_only=not split_only,
            deadline_ms=parse_duration_ms(deadline) if deadline is not None else None,
            max_head_memory_bytes=parse_size_bytes(max_head_memory) if max_head_memory is not None else None,
        )
        budget = _budget(max_error, min_agreement)
        codec = codec or (AUTO_CODEC if budget is not None else DEFAULT_CODEC)
        measured = Profile.load(profile_path)
        for side, device in measured.predicted_from.items():
            console.print(f"{side} times predicted from {device}", highlight=False)
        net = resolve_network(network, bandwidth, rtt)
        result = make_plan(
            measured, net, codec=codec, policy=policy, constraints=constraints, power=power, max_error=budget,
            allow_random_samples=allow_random_samples,
        )  # fmt: skip
        console.print(plan_table(result))
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

            points = sweep_bandwidth(measured, net.rtt_ms, codec=codec, policy=policy, constraints=constraints, power=power)
            console.print(f"switching points ({policy}, RTT {net.rtt_ms:g} ms, {codec}):", highlight=False)
            for segment in points:
                console.print(f"  {segment.describe()}", highlight=False)


@app.command()
def export(
    model: str = typer.Argument(..., help="registered model name or path to an .onnx file"),
    out: Path = typer.Option(..., help="bundle directory to write"),
    cut: str = typer.Option("auto", help="'auto' (plan from a profile) or a cut name / module path"),
    codec: str = typer.Option("int8+zstd", help="codec the bundle is verified with and sends by default; auto: the plan's (with --cut auto)"),
    profile_path: Optional[Path] = typer.Option(None, "--profile", help="profile for --cut auto (default: profile now)"),
    network: str = typer.Option("4g", help=NETWORK_HELP),
    bandwidth: Optional[str] = typer.Option(None, help="uplink rate for --cut auto"),
    rtt: Optional[str] = typer.Option(None, help="round-trip time for --cut auto"),
    input_shape: Optional[str] = typer.Option(None, help="e.g. 1,3,224,224"),
    max_error: Optional[str] = typer.Option(None, help=MAX_ERROR_HELP),
    min_agreement: Optional[str] = typer.Option(None, help=MIN_AGREEMENT_HELP),
    samples: Optional[Path] = typer.Option(None, help=SAMPLES_HELP),
    metric: Optional[str] = typer.Option(None, help=METRIC_HELP),
    allow_random_samples: bool = typer.Option(False, help="verify lossy codecs on random inputs (marked: agreement not meaningful)"),
    preprocess: Optional[str] = typer.Option(None, help=PREPROCESS_HELP),
    quantize_head: bool = typer.Option(False, help="int8 head (static, calibrated on samples never used to verify)"),
    head_format: str = typer.Option("onnx", help="onnx, or ort (ONNX Runtime's mobile format)"),
    sign_key: Optional[Path] = typer.Option(None, help="Ed25519 private key (PEM, `splitinfer signing-key`): sign the bundle"),
) -> None:
    """Cut MODEL into head.onnx and tail.onnx, verify head∘tail, write the bundle."""
    with _user_errors():
        from protos.signing import load_signing_key, sign_bundle
        from splitter.pipeline import export_model
        from splitter.cost.network import resolve_network

        # Read before the export, which takes a while, so a bad key fails at once.
        signer = load_signing_key(sign_key) if sign_key is not None else None
        budget = _budget(max_error, min_agreement)
        samples = _samples_path(samples)

        bundle, check = export_model(
            model,
            out,
            cut=cut,
            codec=codec,
            profile_path=profile_path,
            network=resolve_network(network, bandwidth, rtt),
            input_shape=_shape(input_shape),
            max_error=budget,
            min_agreement=1.0 - budget if budget is not None else 1.0,
            samples_path=samples,
            metric=metric,
            allow_random_samples=allow_random_samples,
            preprocess=preprocess,
            quantize_head=quantize_head,
            head_format=head_format,
        )
        m = bundle.manifest
        console.print(f"bundle {out}: cut {m.cut_name!r} ({len(m.cut)} tensor(s)), codec {m.codec}, hash {m.bundle_hash[:12]}")
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
        if signer is not None:
            console.print(f"signed with key {signer.key_id} → {sign_bundle(out, signer)}", highlight=False)


@app.command()
def serve(
    bundles: list[Path] = typer.Argument(..., help="bundle directories whose tails to serve"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(50051, help="port (0: any free port)"),
    threads: Optional[int] = typer.Option(None, help="onnxruntime threads per tail (default: all cores)"),
    max_message_mb: int = typer.Option(64, help="largest request or reply accepted, MiB"),
    tls_cert: Optional[Path] = typer.Option(None, help="server certificate (PEM): serve TLS"),
    tls_key: Optional[Path] = typer.Option(None, help="the server certificate's private key (PEM)"),
    tls_client_ca: Optional[Path] = typer.Option(None, help="CA (PEM) that signs client certificates: require them (mutual TLS)"),
    tokens: Optional[Path] = typer.Option(None, help="file of 'client-id token' lines: require a bearer token"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus /metrics on this port (0: any free port; default: off)"),
    metrics_host: Optional[str] = typer.Option(None, help="address of /metrics (default: --host)"),
    health_port: Optional[int] = typer.Option(None, help="also answer grpc.health.v1 here, plaintext and health only (probes)"),
    log_format: str = typer.Option("text", help="text, or json: one JSON object per line"),
    grace_s: float = typer.Option(5.0, help="seconds in-flight requests get to finish after SIGTERM"),
    batch_window_ms: float = typer.Option(2.0, help="longest a request waits for others to join its batch"),
    max_batch: int = typer.Option(32, help="requests per batch (1: no batching; tails exported batchable only)"),
    max_queue: int = typer.Option(128, help="requests per model that may wait; beyond, RESOURCE_EXHAUSTED with a retry hint"),
    trust_key: Optional[list[Path]] = typer.Option(
        None, help="Ed25519 public key (PEM) whose signature a bundle must carry (repeatable; default: signatures not checked)"
    ),
) -> None:
    """Serve the tails of one or more bundles over gRPC until SIGTERM."""
    with _user_errors():
        from cloud_runtime.batch_queue import BatchingConfig
        from cloud_runtime.config import ServerConfig, check_port
        from cloud_runtime.logs import configure_logging
        from cloud_runtime.server import serve_forever
        from protos.tls import TLSFiles

        # Named by flag here, before ServerConfig names them by parameter.
        for flag, value in (("--port", port), ("--metrics-port", metrics_port), ("--health-port", health_port)):
            check_port(flag, value)
        batching = BatchingConfig(window_ms=batch_window_ms, max_batch=max_batch, max_queue=max_queue)
        configure_logging(log_format)
        tls = None
        if tls_cert is not None or tls_key is not None or tls_client_ca is not None:
            tls = TLSFiles(tls_cert, tls_key, tls_client_ca)
        config = ServerConfig(
            bundles,
            host=host,
            port=port,
            threads=threads,
            max_message_bytes=max_message_mb << 20,
            tls=tls,
            tokens=tokens,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            health_port=health_port,
            grace_s=grace_s,
            batching=batching,
            trust_keys=trust_key or (),
        )
        serve_forever(config)


@app.command()
def run(
    bundle: Path = typer.Argument(..., help="bundle directory (its head runs here)"),
    server: Optional[str] = typer.Option(None, help="HOST:PORT of `splitinfer serve` (not needed for an all-on-device bundle)"),
    input_path: Path = typer.Option(..., "--input", help="an image file, or a .npy array of the model's input"),
    codec: Optional[str] = typer.Option(None, help="override the bundle's codec"),
    threads: int = typer.Option(1, help="onnxruntime threads for the head"),
    repeat: int = typer.Option(1, help="send the input this many times (timing)"),
    top: int = typer.Option(5, help="classes to print"),
    tls_ca: Optional[Path] = typer.Option(None, help="CA (PEM) that signed the server's certificate: use TLS"),
    tls_cert: Optional[Path] = typer.Option(None, help="client certificate (PEM), for a server that requires one"),
    tls_key: Optional[Path] = typer.Option(None, help="the client certificate's private key (PEM)"),
    token: Optional[str] = typer.Option(None, envvar="SPLITINFER_TOKEN", help="bearer token (or env SPLITINFER_TOKEN)"),
    attempts: int = typer.Option(5, help="calls per request while the server is unavailable (1: no retry)"),
    fallback: bool = typer.Option(False, help="run the tail here (the bundle's tail.onnx) when the server stays unavailable"),
    race: bool = typer.Option(False, help="also run the rest of the model here while each request is out; the first answer wins"),
) -> None:
    """Run one input through the split model: head here, tail on the server."""
    with _user_errors():
        import numpy as np

        from edge_runtime.client import EdgeClient
        from edge_runtime.config import EdgeConfig
        from edge_runtime.retry import RetryPolicy
        from protos.classes import top_classes
        from protos.preprocess import load_image
        from splitinfer.tables import requests_table

        if repeat < 1:
            raise SplitInferError(f"--repeat must be at least 1, got {repeat}")
        config = EdgeConfig(
            codec=codec,
            threads=threads,
            token=token,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            retry=RetryPolicy(attempts=attempts),
            fallback=fallback,
            race_local=race,
        )
        with EdgeClient(bundle, server, config) as client:
            if input_path.suffix == ".npy":
                if not input_path.is_file():
                    raise SplitInferError(f"input {str(input_path)!r} does not exist")
                array = np.load(input_path)
                results = [client.infer(array) for _ in range(repeat)]
            else:
                image = load_image(input_path)
                results = [client.infer_image(image) for _ in range(repeat)]
        # A multi-cut bundle chooses per request: say which cut and codec each one ran.
        chosen = (lambda r: f"cut {r.cut}, {r.codec}") if client.adaptive is not None else (lambda r: "")

        def note(r) -> str:
            if r.fallback:
                return f"tail ran here: {r.fallback_reason}"
            return ", ".join(part for part in (chosen(r), f"the {r.winner} answered first" if r.raced else "") if part)

        rows = [(f"{input_path.name} #{i}", r, note(r)) for i, r in enumerate(results)]
        console.print(requests_table(rows, f"{client.bundle.manifest.model_id} via {server or 'device only'}"))
        logits = next(iter(results[-1].outputs.values()))
        best = top_classes(logits, client.bundle.manifest.labels, top)
        console.print("top classes: " + ", ".join(map(str, best)), highlight=False)


@app.command()
def demo(
    model: str = typer.Option("efficientnet_lite0", help="registered model to demonstrate"),
    network: str = typer.Option("4g", help=NETWORK_HELP),
    edge_slowdown: float = typer.Option(30.0, help="how many times slower the device is than this machine"),
    codec: str = typer.Option("int8+zstd", help="activation codec"),
    out: Path = typer.Option(Path("out/demo"), help="where the profile and the bundle go"),
    repeats: int = typer.Option(5, help="timed runs per profile measurement"),
    samples: Optional[Path] = typer.Option(None, help=SAMPLES_HELP),
) -> None:
    """Profile, plan, export, serve on loopback and run real photos end to end."""
    with _user_errors():
        from splitinfer.demo import run_demo
        from splitter.cost.network import resolve_network

        run_demo(
            model, resolve_network(network, None, None), edge_slowdown=edge_slowdown, codec=codec, out=out, repeats=repeats,
            console=console, samples=_samples_path(samples),
        )  # fmt: skip


import splitinfer.commands  # noqa: E402,F401  (registers the commands of splitinfer/commands/)
