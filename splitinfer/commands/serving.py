"""`splitinfer serve` and `run`: the tail served over gRPC, and one input run through the split
model (the device side: no torch needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from protos.errors import SplitInferError
from splitinfer.console import console, user_errors
from splitinfer.options import at_least, in_range, positive

commands = typer.Typer()
# The demo page as `npm run build` leaves it in the edge SDK (edge_runtime/web), in a source tree.
DEMO_PAGE = Path(__file__).resolve().parents[2] / "edge_runtime" / "web" / "dist" / "demo"


def built_demo_page() -> Path | None:
    return DEMO_PAGE if (DEMO_PAGE / "index.html").is_file() else None


@commands.command()
def serve(
    bundles: list[Path] = typer.Argument(..., metavar="BUNDLE", help="bundle directories whose tails to serve"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(50051, help="port (0: any free port)"),
    threads: int | None = typer.Option(
        None, callback=at_least(0), help="onnxruntime threads per tail (default: all cores)"
    ),
    max_message_mb: int = typer.Option(64, callback=in_range(1, 2047), help="largest request or reply accepted, MiB"),
    tls_cert: Path | None = typer.Option(None, help="server certificate (PEM): serve TLS"),
    tls_key: Path | None = typer.Option(None, help="the server certificate's private key (PEM)"),
    tls_client_ca: Path | None = typer.Option(
        None, help="CA (PEM) that signs client certificates: require them (mutual TLS)"
    ),
    tokens: Path | None = typer.Option(None, help="file of 'client-id token' lines: require a bearer token"),
    metrics_port: int | None = typer.Option(
        None, help="serve Prometheus /metrics on this port (0: any free port; default: off)"
    ),
    metrics_host: str | None = typer.Option(
        None, help="address of /metrics (default: 127.0.0.1; a pod gives 0.0.0.0 for Prometheus)"
    ),
    metrics_tls_cert: Path | None = typer.Option(None, help="certificate (PEM) of /metrics: serve it over HTTPS"),
    metrics_tls_key: Path | None = typer.Option(None, help="the metrics certificate's private key (PEM)"),
    metrics_tls_client_ca: Path | None = typer.Option(
        None, help="CA (PEM) that signs scrapers' certificates: require them"
    ),
    metrics_basic_auth: Path | None = typer.Option(
        None, help="file of 'user password' lines: /metrics requires HTTP basic auth"
    ),
    anonymous_metrics: bool = typer.Option(
        False, "--anonymous-metrics", help='count requests under client "all" instead of each token\'s client id'
    ),
    health_port: int | None = typer.Option(
        None, help="also answer grpc.health.v1 here, plaintext and health only (probes)"
    ),
    log_format: str = typer.Option("text", help="text, or json: one JSON object per line"),
    grace_s: float = typer.Option(
        5.0, callback=at_least(0), help="seconds in-flight requests get to finish after SIGTERM"
    ),
    max_calls_per_client: int | None = typer.Option(
        None,
        callback=at_least(1),
        help="calls one client (a token's id) may have open at once (default: half the workers; needs --tokens)",
    ),
    idle_timeout_s: float = typer.Option(
        30.0, callback=positive, help="seconds a call may wait for a request message before it is cancelled"
    ),
    reject_non_finite: bool = typer.Option(
        False,
        "--reject-non-finite",
        help="refuse requests whose tensors hold NaN or infinite values (INVALID_ARGUMENT)",
    ),
    batch_window_ms: float = typer.Option(
        2.0,
        callback=at_least(0),
        help="longest a request waits for others to join its batch (within it, the arrival rate decides)",
    ),
    fixed_batch_window: bool = typer.Option(
        False,
        "--fixed-batch-window",
        help="every batch waits out --batch-window-ms (most batching; taxes a lone request)",
    ),
    max_batch: int = typer.Option(
        32, callback=in_range(1, 4096), help="requests per batch (1: no batching; tails exported batchable only)"
    ),
    max_queue: int = typer.Option(
        128,
        callback=in_range(1, 65536),
        help="requests per model that may wait; beyond, RESOURCE_EXHAUSTED with a retry hint",
    ),
    trust_key: list[Path] | None = typer.Option(
        None,
        help="Ed25519 public key (PEM) whose signature a bundle must carry (repeatable; default: signatures not checked)",
    ),
    web_port: int | None = typer.Option(
        None, help="also serve gRPC-Web and Connect (browsers) and the demo page on this port (0: any free port)"
    ),
    cors_origin: list[str] | None = typer.Option(
        None, help="origin of a page elsewhere allowed to call the web port, e.g. https://app.example (repeatable)"
    ),
    web_root: Path | None = typer.Option(
        None, help="static files to serve on the web port (default: the demo page, once built by `make web`)"
    ),
) -> None:
    """Serve the tails of one or more bundles over gRPC until SIGTERM."""
    with user_errors():
        from cloud_runtime.batch_queue import BatchingConfig
        from cloud_runtime.config import DEFAULT_METRICS_HOST, ServerConfig, check_port
        from cloud_runtime.logs import configure_logging
        from cloud_runtime.server import serve_forever
        from protos.tls import TLSFiles

        # Named by flag here, before ServerConfig names them by parameter.
        ports = (("--port", port), ("--metrics-port", metrics_port), ("--health-port", health_port))
        for flag, value in (*ports, ("--web-port", web_port)):
            check_port(flag, value)
        if max_calls_per_client is not None and tokens is None:
            raise SplitInferError(
                f"--max-calls-per-client {max_calls_per_client} needs --tokens: without them clients cannot be told apart"
            )
        metrics_side = {
            "--metrics-host": metrics_host,
            "--metrics-tls-cert": metrics_tls_cert,
            "--metrics-tls-key": metrics_tls_key,
            "--metrics-tls-client-ca": metrics_tls_client_ca,
            "--metrics-basic-auth": metrics_basic_auth,
        }
        for flag, value in metrics_side.items():
            if value is not None and metrics_port is None:
                raise SplitInferError(f"{flag} {str(value)!r} is given without --metrics-port")
        if web_root is not None and not web_root.is_dir():
            raise SplitInferError(f"--web-root {str(web_root)!r} is not a directory")
        if (cors_origin or web_root is not None) and web_port is None:
            given = f"--cors-origin {cors_origin[0]!r}" if cors_origin else f"--web-root {str(web_root)!r}"
            raise SplitInferError(f"{given} needs --web-port to serve it on")
        batching = BatchingConfig(
            window_ms=batch_window_ms, max_batch=max_batch, max_queue=max_queue, fixed_window=fixed_batch_window
        )
        configure_logging(log_format)
        tls = None
        if tls_cert is not None or tls_key is not None or tls_client_ca is not None:
            tls = TLSFiles(tls_cert, tls_key, tls_client_ca)
        metrics_tls = None
        if metrics_tls_cert is not None or metrics_tls_key is not None or metrics_tls_client_ca is not None:
            metrics_tls = TLSFiles(metrics_tls_cert, metrics_tls_key, metrics_tls_client_ca)
        config = ServerConfig(
            bundles,
            host=host,
            port=port,
            threads=threads,
            max_message_bytes=max_message_mb << 20,
            tls=tls,
            tokens=tokens,
            metrics_port=metrics_port,
            metrics_host=metrics_host or DEFAULT_METRICS_HOST,
            metrics_tls=metrics_tls,
            metrics_basic_auth=metrics_basic_auth,
            metrics_client_label=not anonymous_metrics,
            health_port=health_port,
            grace_s=grace_s,
            max_calls_per_client=max_calls_per_client,
            idle_timeout_s=idle_timeout_s,
            reject_non_finite=reject_non_finite,
            batching=batching,
            trust_keys=trust_key or (),
            web_port=web_port,
            cors_origins=cors_origin or (),
            web_root=web_root if web_root is not None or web_port is None else built_demo_page(),
        )
        serve_forever(config)


@commands.command()
def run(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="bundle directory (its head runs here)"),
    server: str | None = typer.Option(
        None,
        help="HOST:PORT of `splitinfer serve` (not needed for an all-on-device bundle), or replicas to balance"
        " requests over: IP:PORT,IP:PORT,... or dns:///NAME:PORT (every address NAME resolves to)",
    ),
    input_path: Path = typer.Option(..., "--input", help="an image file, or a .npy array of the model's input"),
    codec: str | None = typer.Option(None, help="override the bundle's codec"),
    threads: int = typer.Option(1, callback=at_least(0), help="onnxruntime threads for the head"),
    repeat: int = typer.Option(1, callback=at_least(1), help="send the input this many times (timing)"),
    top: int = typer.Option(5, callback=at_least(1), help="classes to print"),
    result: str | None = typer.Option(
        None,
        help="the form of the answer, sized for the downlink: a codec (fp16+zstd), the server's top-k (top5), "
        "or both (top5:fp16); default: the bundle's",
    ),
    tls_ca: Path | None = typer.Option(None, help="CA (PEM) that signed the server's certificate: use TLS"),
    tls_cert: Path | None = typer.Option(None, help="client certificate (PEM), for a server that requires one"),
    tls_key: Path | None = typer.Option(None, help="the client certificate's private key (PEM)"),
    token: str | None = typer.Option(None, envvar="SPLITINFER_TOKEN", help="bearer token (or env SPLITINFER_TOKEN)"),
    metadata: list[str] | None = typer.Option(
        None,
        help="KEY=VALUE sent as call metadata on every call (repeatable), e.g. application=NAME for Ray Serve's"
        " gRPC proxy serving several applications",
    ),
    attempts: int = typer.Option(
        5, callback=in_range(1, 100), help="calls per request while the server is unavailable (1: no retry)"
    ),
    fallback: bool = typer.Option(
        False, "--fallback", help="run the tail here (the bundle's tail.onnx) when the server stays unavailable"
    ),
    race: bool = typer.Option(
        False, "--race", help="also run the rest of the model here while each request is out; the first answer wins"
    ),
    timeout: str = typer.Option("30s", help="each request's deadline, retries included, e.g. 5s or 800ms"),
    trust_key: list[Path] | None = typer.Option(
        None,
        help="Ed25519 public key (PEM) whose signature the bundle must carry, checked before the head runs (repeatable)",
    ),
    head_key: Path | None = typer.Option(
        None, help="key file of an encrypted head (export --encrypt-head); or the key itself in SPLITINFER_HEAD_KEY"
    ),
    update_cache: Path | None = typer.Option(
        None,
        help="before the first request, fetch a newer version of the bundle from the server into this directory,"
        " verified (sha256, bundle hash, --trust-key signature) before it runs; later runs start on it",
    ),
) -> None:
    """Run one input through the split model: head here, tail on the server."""
    with user_errors():
        import numpy as np

        from edge_runtime.balancing import server_target
        from edge_runtime.client import EdgeClient
        from edge_runtime.config import EdgeConfig
        from edge_runtime.retry import RetryPolicy
        from protos.classes import answer_classes
        from protos.preprocess import load_image
        from protos.units import parse_duration_ms
        from splitinfer.tables import requests_table

        if server is not None:
            server_target(server)  # a bad address is refused before the bundle is read
        pairs = [item.partition("=") for item in metadata or ()]
        for item, (key, sep, _) in zip(metadata or (), pairs):
            if not (sep and key):
                raise SplitInferError(f"--metadata {item!r} is not KEY=VALUE, e.g. application=splitinfer")
        timeout_s = parse_duration_ms(timeout) / 1e3
        if not timeout_s > 0:
            raise SplitInferError(f"--timeout {timeout!r} must be a positive duration")
        config = EdgeConfig(
            codec=codec,
            threads=threads,
            token=token,
            metadata=[(key, value) for key, _, value in pairs],
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            retry=RetryPolicy(attempts=attempts),
            fallback=fallback,
            race_local=race,
            timeout_s=timeout_s,
            trust_keys=tuple(trust_key or ()),
            head_key=head_key,
            result=result,
            update_cache=update_cache,
        )
        with EdgeClient(bundle, server, config) as client:
            if update_cache is not None:
                _update(client)
            if input_path.suffix == ".npy":
                if not input_path.is_file():
                    raise SplitInferError(f"input {str(input_path)!r} does not exist")
                with open(input_path, "rb") as file:
                    if file.read(6) != b"\x93NUMPY":  # numpy would take it for a pickle
                        raise SplitInferError(f"--input {str(input_path)!r} is not a .npy file (numpy.save writes one)")
                try:
                    array = np.load(input_path)
                except (ValueError, OSError, EOFError) as err:  # truncated, or an array of Python objects
                    raise SplitInferError(f"--input {str(input_path)!r} is not an array of numbers: {err}") from None
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
        best = answer_classes(results[-1].outputs, client.bundle.manifest.labels, top)
        console.print("top classes: " + ", ".join(map(str, best)), highlight=False)


def _update(client) -> None:
    """One update check of `run --update-cache`: a refused version is reported, and the run goes
    on with the version in use, as a device would."""
    from edge_runtime.updates import UpdateRefusedError

    try:
        updated = client.update()
    except UpdateRefusedError as err:
        console.print(str(err), style="yellow", markup=False, highlight=False)
        return
    manifest = client.bundle.manifest
    state = "updated to" if updated else "up to date:"
    console.print(
        f"bundle {state} version {manifest.version} ({manifest.bundle_hash[:12]}, {client.bundle.path})",
        highlight=False,
    )
