"""The client's gRPC channel to one server, and how each call on it is made and its failure read.

Security is the server's choice and the client follows it: `tls_ca` (the CA that signed the
server's certificate) turns on TLS, `tls_cert`/`tls_key` add a client certificate for mutual TLS,
and `token` is sent as `authorization: Bearer <token>` metadata on every call, unary and stream,
with `EdgeConfig.metadata` (such as Ray Serve's `application` routing key).
The channel pings a silent connection (keepalive) and redials a lost server within seconds. A
refusal by the server becomes the `SplitInferError` subclass matching its status code, with the
server's message intact and, where gRPC's own words do not say what to check, a hint.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from edge_runtime.balancing import server_target
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import tls_mismatch
from protos.errors import BundleMismatchError, ServerUnavailableError, SplitInferError, UnknownModelError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from protos.tls import TLSFiles

CHANNEL_OPTIONS = [
    # Ping a connection that has been silent this long during a call, and give it up when the
    # ping is not answered: a server that vanished without a FIN (power, network) is noticed.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC redials a lost server with a backoff growing to 2 minutes by default; a restarted
    # server should be found within seconds. Not `grpc.min_reconnect_backoff_ms`: gRPC's core
    # takes it as MIN_CONNECT_TIMEOUT (doc/connection-backoff.md: the least time a connection
    # attempt is given, 20 s by default), so 100 ms would abandon every handshake over a link
    # whose round trip is longer (3G, satellite, a congested cell) and never connect.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

# Status codes whose meaning a caller acts on get their own class; any other is a SplitInferError
# carrying the code. INVALID_ARGUMENT stays generic: the server's message says which check failed.
_ERRORS_BY_CODE: dict[grpc.StatusCode, type[SplitInferError]] = {
    grpc.StatusCode.NOT_FOUND: UnknownModelError,
    grpc.StatusCode.FAILED_PRECONDITION: BundleMismatchError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServerUnavailableError,
}
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The status code of its number (a stream reply's error carries the number)."""
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def channel_credentials(config: EdgeConfig) -> grpc.ChannelCredentials | None:
    """The TLS credentials `config` asks for (None: plaintext), the files read now so that a bad
    one is reported when the client is made, with its name, not at the first call."""
    if config.tls_mode == "off":
        return None
    material = TLSFiles(config.tls_cert, config.tls_key, config.tls_ca).load(role="client")
    return grpc.ssl_channel_credentials(material.ca, material.key, material.cert)


def call_metadata(config: EdgeConfig) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call carries: the bearer token and `config.metadata` (EdgeConfig checked
    both), or none."""
    token = () if config.token is None else (("authorization", f"Bearer {config.token}"),)
    return (*token, *config.metadata) or None


class Transport:
    """A channel to `server` ("host:port", or replicas: edge_runtime.balancing) and the calls of one
    client on it."""

    def __init__(self, server: str, config: EdgeConfig, credentials: grpc.ChannelCredentials | None) -> None:
        self.server = server
        target = server_target(server)
        self.tls = config.tls_mode
        self.tls_ca = str(config.tls_ca) if config.tls_ca is not None else None
        self.tls_cert = str(config.tls_cert) if config.tls_cert is not None else None
        self.timeout_s = config.timeout_s
        self._has_token = config.token is not None
        self._metadata = call_metadata(config)
        # The same limit both ways as the server's: outputs can exceed gRPC's 4 MB default too.
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            *CHANNEL_OPTIONS,
            *target.options,
        ]
        if credentials is None:
            self.channel = grpc.insecure_channel(target.target, options=options)
        else:
            self.channel = grpc.secure_channel(target.target, credentials, options=options)
        self._stub = pb_grpc.SplitInferenceStub(self.channel)

    def infer(self, request: pb.InferRequest, timeout_s: float | None = None) -> pb.InferResponse:
        """One attempt, with what is left of the request's deadline (`timeout_s`, else the whole)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return self._stub.Infer(request, timeout=timeout, metadata=self._metadata)

    def infer_future(self, request: pb.InferRequest) -> grpc.Future:
        return self._stub.Infer.future(request, timeout=self.timeout_s, metadata=self._metadata)

    def infer_stream(self, requests: Iterator[pb.InferRequest]):  # -> grpc's streaming call
        """One InferStream call; no deadline: it lasts as long as `requests`."""
        return self._stub.InferStream(requests, metadata=self._metadata)

    def list_models(self) -> pb.ListModelsResponse:
        return self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s, metadata=self._metadata)

    def fetch_bundle_file(self, request: pb.FetchBundleFileRequest, timeout_s: float):  # -> grpc's stream of FileChunk
        """One FetchBundleFile call (edge_runtime.updates), within `timeout_s`."""
        return self._stub.FetchBundleFile(request, timeout=timeout_s, metadata=self._metadata)

    def connect(self, timeout_s: float) -> None:
        """Waits until the channel is connected; ServerUnavailableError after `timeout_s` (a stream
        has no deadline of its own, so one to a server that never completes the handshake would
        otherwise wait for ever)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            error = self.error(grpc.StatusCode.UNAVAILABLE, f"not connected within {timeout_s:g} s")
            raise error from None

    def wait_ready(self, timeout_s: float) -> None:
        """Waits until the channel is connected, for at most `timeout_s`."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            pass

    def check_reply_to(self, request: pb.InferRequest, response: pb.InferResponse) -> None:
        if response.request_id != request.request_id:
            raise SplitInferError(
                f"server {self.server} answered request {request.request_id!r}"
                f" with the reply to {response.request_id!r}"
            )

    def error(self, code: grpc.StatusCode, details: str | None, attempts: int = 1) -> SplitInferError:
        """The error a refusal becomes, naming the server, the code and the server's words."""
        message = f"server {self.server}: {code.name}: {details}"
        if attempts > 1:
            message += f" (after {attempts} attempts)"
        hint = self._hint(code, details)
        error = _ERRORS_BY_CODE.get(code, SplitInferError)(f"{message} ({hint})" if hint else message)
        error.status_code = code
        return error

    def close(self) -> None:
        self.channel.close()

    def _hint(self, code: grpc.StatusCode, details: str | None = None) -> str:
        """What to check when gRPC's own words do not say it: a refused TLS handshake reads as a
        closed socket, and a plaintext client sees nothing of TLS at all."""
        mismatch = tls_mismatch(details) if code == grpc.StatusCode.UNAVAILABLE else ""
        if mismatch == "certificate":
            return (
                f"the server's certificate is not signed by the CA {self.tls_ca!r} (tls_ca): "
                "is it the CA that signed the server's certificate, and does the address match it?"
            )
        if mismatch == "plaintext":
            return "the server speaks plaintext, not TLS: connect without tls_ca (--tls-ca)"
        if code == grpc.StatusCode.UNAVAILABLE and self.tls == "mutual":
            return (
                f"is the server running there, and does it trust the CA that signed this client's certificate "
                f"{self.tls_cert!r} (tls_cert)?"
            )
        if code == grpc.StatusCode.UNAVAILABLE and self.tls == "off":
            return "is the server running there, and does it need TLS? then pass tls_ca (--tls-ca)"
        if code == grpc.StatusCode.UNAVAILABLE and self.tls == "tls":
            return (
                "is the server running there, and does it require client certificates? then pass tls_cert and tls_key"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED and not self._has_token:
            return "the server needs a token: pass token (--token)"
        return ""
