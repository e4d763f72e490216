"""/metrics over HTTP(S): a registry served to Prometheus, safely on a network a client can reach.

- **Bounded threads.** Scrapes are answered by a small pool, and a connection that does not finish
  its request (or its TLS handshake) within a read timeout is closed: a client that opens
  connections and never completes them holds at most MAX_SCRAPERS threads, each for at most
  READ_TIMEOUT_S, and connections beyond what the threads can take are closed at once.
  prometheus-client's own `start_http_server` starts a thread per connection, without limit.
- **Where it listens.** It binds the address it is given; the server's default is loopback, so
  metrics reach a network only when asked for (a pod gives 0.0.0.0 for Prometheus to scrape it).
- **TLS** (`tls`: certificate and key; with `tls.ca`, scrapers must present a certificate it
  signs), done by the standard library's ssl on each connection's pool thread, so a slow handshake
  never stalls the accept loop. prometheus-client wraps its listening socket instead, which
  handshakes in the accept loop.
- **Basic auth** (`basic_auth`: user → password): a scrape without a listed user and password is
  answered 401. Prometheus sends them with `basic_auth` in its scrape config; use it with TLS,
  as the password is otherwise in clear text. prometheus-client has no server-side check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from cloud_runtime.credential_file import read_pairs
from protos.errors import ServerUnavailableError, SplitInferError
from protos.tls import TLSConfigError, TLSFiles

# Threads that answer scrapes (Prometheus scrapes one at a time), connections that may wait for
# one, and how long a connection may take to send its request.
MAX_SCRAPERS = 4
MAX_WAITING = 16
READ_TIMEOUT_S = 5.0
REALM = "splitinfer metrics"


class BasicAuthFileError(SplitInferError):
    """A basic-auth file is missing, empty or has a line that is not `user password`."""


@dataclass
class MetricsEndpoint:
    """The HTTP server of /metrics, on its own daemon thread."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.httpd.server_port

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def load_basic_auth(path: str | Path) -> dict[str, str]:
    """User → password from `path`: one `user password` per line, blank lines and `#` comments
    allowed (the tokens file's format)."""
    users: dict[str, str] = {}
    for number, user, password in read_pairs(path, "basic-auth file", "user password", BasicAuthFileError):
        if ":" in user:
            raise BasicAuthFileError(f"basic-auth file {str(path)!r} line {number}: a user name cannot hold ':'")
        users[user] = password
    if not users:
        raise BasicAuthFileError(f"basic-auth file {str(path)!r} has no users: no scraper could read the metrics")
    return users


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    tls: TLSFiles | None = None,
    basic_auth: Mapping[str, str] | None = None,
) -> MetricsEndpoint:
    """Serves `registry` on host:port (0: a free port) at /metrics, over TLS when `tls` is given,
    to scrapers with a listed user and password when `basic_auth` is."""
    context = _tls_context(tls) if tls is not None else None
    app = make_wsgi_app(registry)
    if basic_auth is not None:
        app = _BasicAuth(app, basic_auth)
    server_class = _MetricsServer6 if ":" in host else _MetricsServer
    try:
        httpd = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    except OSError as err:
        raise ServerUnavailableError(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from err
    httpd.tls_context = context
    # prometheus-client's start_http_server polls for shutdown every 0.5 s, which each stop
    # would then wait out; a short poll lets a server stop at once.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return MetricsEndpoint(httpd, thread)


def _tls_context(tls: TLSFiles) -> ssl.SSLContext:
    tls.load(role="metrics")  # the files' own errors (missing, not PEM, encrypted) by name
    if tls.cert is None:
        raise TLSConfigError("metrics TLS needs a certificate and its key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            context.load_verify_locations(str(tls.ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as err:
        raise TLSConfigError(
            f"metrics TLS certificate {str(tls.cert)!r} and key {str(tls.key)!r} are refused "
            f"(is the key the certificate's?): {err.reason or err}"
        ) from err
    return context


class _BasicAuth:
    """A WSGI app that answers 401 unless the request carries a listed user and password."""

    def __init__(self, app: Callable[..., Iterable[bytes]], users: Mapping[str, str]) -> None:
        if not users:
            raise BasicAuthFileError("no basic-auth users: no scraper could read the metrics")
        self._app = app
        # Compared by digest: the comparison then leaks nothing about how much of a guess was right.
        self._users = {user: _digest(password) for user, password in users.items()}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return self._app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{REALM}"'), ("Content-Length", "0")])
        return [b""]

    def _allowed(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = self._users.get(user)
        # The digest is compared even for an unknown user, so timing does not tell users apart.
        matched = hmac.compare_digest(expected or _digest(""), _digest(password))
        return bool(sep) and expected is not None and matched


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class _MetricsServer(WSGIServer):
    """A WSGI server whose connections are handled by a bounded pool (the standard library's
    ThreadingMixIn starts a thread per connection, without limit), each over TLS when the server
    has a `tls_context`."""

    tls_context: ssl.SSLContext | None = None

    def __init__(self, *args, **kwargs) -> None:
        # Before binding: a failed bind closes the server, pool included.
        self._pool = ThreadPoolExecutor(MAX_SCRAPERS, thread_name_prefix="metrics")
        self._slots = threading.BoundedSemaphore(MAX_SCRAPERS + MAX_WAITING)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            # Every thread busy and enough waiting: closed at once rather than held.
            self.shutdown_request(request)
            return
        self._pool.submit(self._handle, request, client_address)

    # Connections the kernel may hold before the accept loop takes them.
    request_queue_size = 64

    def _handle(self, request, client_address) -> None:
        try:
            if self.tls_context is not None:
                # The handshake is bounded by the read timeout too.
                request.settimeout(READ_TIMEOUT_S)
                request = self.tls_context.wrap_socket(request, server_side=True)
            self.finish_request(request, client_address)
        except OSError:
            # A client that went silent (the read timeout), went away, or failed the handshake
            # (ssl.SSLError is an OSError): nothing to report.
            pass
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    # socketserver applies it to the connection: a request not read within it is abandoned.
    timeout = READ_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        # One line per scrape on stderr would drown the server's own log.
        pass
