"""Every option of an EdgeClient, in one frozen object validated once where it is made.

`EdgeConfig` plays the part onnxruntime's SessionOptions play for an InferenceSession: the client
takes the bundle, the server's address and one of these. Each field is checked in `__post_init__`,
and a bad value is a `SplitInferError` naming the parameter, the value and the rule, before any
file is read or any connection made. What needs the bundle to check (a codec given for a multi-cut
bundle, whose decision table chooses the codec) and the TLS files themselves (protos.tls reads and
checks them) are the client's, when it is made.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.adaptive import AdaptiveSettings
from edge_runtime.retry import RetryPolicy
from protos.codec import Codec
from protos.errors import SplitInferError
from protos.result_form import ResultForm
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES

# What gRPC accepts as a metadata key (it refuses others only at the first call, in words that do
# not say which key).
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")


@dataclass(frozen=True)
class EdgeConfig:
    """How an EdgeClient runs, calls the server, and copes when it cannot.

    `codec` defaults to the one the bundle was exported and verified with (a name such as
    "int8+zstd" is parsed here). `threads` are the head's onnxruntime threads (0: onnxruntime's
    default); `timeout_s` is each request's deadline: a unary call's, retries and their waits
    included, and each reply's on a stream (the server drops a request whose deadline passes
    before its tail runs); `max_message_bytes` limits messages both ways, as the
    server's does.

    `token`: a bearer token the server knows this client by. `tls_ca`: PEM file of the CA that
    signed the server's certificate (TLS on); `tls_cert` and `tls_key`: this client's certificate
    and key, for a server that requires them (mutual TLS). `tls=True` turns TLS on with gRPC's
    default roots when the server's certificate comes from a public CA.

    `metadata`: more call metadata, (key, value) pairs or a mapping, sent on every call (unary,
    stream, probe and update fetch alike), for what routes calls in front of the server: Ray
    Serve's gRPC proxy picks one of several applications by `application: NAME`
    (cloud_runtime.ray_serve). Keys are gRPC's lowercase ASCII (a-z, 0-9, `-`, `_`, `.`), not
    `grpc-` ones (gRPC's own) nor `-bin` ones (binary values); values printable ASCII;
    `authorization` is `token`'s.

    `retry`: how unary requests are retried (NO_RETRY: never). `fallback`: run the tail here when
    the server cannot be used (it loads tail.onnx, the size of the server's half, on first use);
    `probe_interval_s`: how often, while falling back, a request tries the server first.

    `result`: the form of the outputs (protos.result_form: a codec such as "fp16+zstd", a server-side
    top-k such as "top5", or both, "top5:fp16"), sized for the downlink; None: the bundle's
    default. A result answered here (fallback, racing) has the same form.

    `race_local`: run the rest of the model here while each unary request is out and take the
    first answer (edge_runtime.race; streams do not race).

    `trust_keys`: Ed25519 public keys (PEM); when given, the bundle must carry a signature by one
    of them over its manifest (which pins every model file), checked before any head runs,
    fallback included (protos.signing; needs the `cryptography` package).

    `head_key`: the key file (64 hex digits) of a bundle whose head is encrypted
    (protos.head_encryption; None: the environment's SPLITINFER_HEAD_KEY). The head is decrypted
    into memory.

    `update_cache`: a directory where newer versions of the bundle fetched from the server are
    kept (edge_runtime.updates; None: no updates). `EdgeClient.update()` checks for one; with
    `update_interval_s` > 0 the client checks that often on a thread of its own. A version is
    verified before first use (its files' sha256, its bundle hash, and with `trust_keys` its
    signature) and used from the next request on; one that does not verify is refused and the
    version in use goes on. A client made later starts on the newest verified version cached.

    With a multi-cut bundle: `adaptive` sets the hysteresis, probing and estimator window;
    `initial_bandwidth_bps` and `initial_rtt_ms` are what the client plans for until it has
    measured the link (default: 5.85 Mbit/s and the bundle's planning RTT). The table chooses the
    codec of each request, so `codec` must not be given.
    """

    codec: Codec | str | None = None
    threads: int = 1
    timeout_s: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    token: str | None = None
    metadata: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    tls: bool = False
    tls_ca: str | Path | None = None
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    retry: RetryPolicy = RetryPolicy()
    fallback: bool = False
    probe_interval_s: float = 5.0
    adaptive: AdaptiveSettings = AdaptiveSettings()
    initial_bandwidth_bps: float = 5.85e6
    initial_rtt_ms: float | None = None
    race_local: bool = False
    trust_keys: tuple[str | Path, ...] = ()
    head_key: str | Path | None = None
    result: ResultForm | str | None = None
    update_cache: str | Path | None = None
    update_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.result, str):
            object.__setattr__(self, "result", ResultForm.parse(self.result))
        elif not (self.result is None or isinstance(self.result, ResultForm)):
            raise SplitInferError(f"result {self.result!r} is not a result form (such as 'top5'), a ResultForm or None")
        if isinstance(self.codec, str):
            # Normalised once: the client and every request use the parsed codec.
            object.__setattr__(self, "codec", Codec.parse(self.codec))
        elif not (self.codec is None or isinstance(self.codec, Codec)):
            raise SplitInferError(f"codec {self.codec!r} is not a codec name (such as 'int8+zstd'), a Codec or None")
        if not (_is_int(self.threads) and self.threads >= 0):
            raise SplitInferError(f"threads {self.threads!r} is not an integer ≥ 0 (0: onnxruntime's default)")
        _positive("timeout_s", self.timeout_s)
        if not (_is_int(self.max_message_bytes) and self.max_message_bytes >= 1):
            raise SplitInferError(f"max_message_bytes {self.max_message_bytes!r} is not an integer ≥ 1")
        _check_token(self.token)
        object.__setattr__(self, "metadata", _checked_metadata(self.metadata))
        for name in ("tls_ca", "tls_cert", "tls_key", "head_key", "update_cache"):
            value = getattr(self, name)
            if not (value is None or isinstance(value, (str, Path))):
                raise SplitInferError(f"{name} {value!r} is not a path (str or Path) or None")
        for name in ("tls", "fallback", "race_local"):
            if not isinstance(getattr(self, name), bool):
                raise SplitInferError(f"{name} {getattr(self, name)!r} is not True or False")
        if isinstance(self.trust_keys, (str, Path)) or not all(isinstance(k, (str, Path)) for k in self.trust_keys):
            raise SplitInferError(f"trust_keys {self.trust_keys!r} is not a sequence of paths (public keys, PEM)")
        object.__setattr__(self, "trust_keys", tuple(Path(k) for k in self.trust_keys))
        if not isinstance(self.retry, RetryPolicy):
            raise SplitInferError(f"retry {self.retry!r} is not a RetryPolicy")
        if not (_is_number(self.probe_interval_s) and self.probe_interval_s >= 0):
            raise SplitInferError(f"probe_interval_s {self.probe_interval_s!r} is not a finite number ≥ 0")
        if not (_is_number(self.update_interval_s) and self.update_interval_s >= 0):
            raise SplitInferError(f"update_interval_s {self.update_interval_s!r} is not a finite number ≥ 0")
        if self.update_interval_s > 0 and self.update_cache is None:
            raise SplitInferError(
                f"update_interval_s {self.update_interval_s!r} needs update_cache, where updates are kept"
            )
        if not isinstance(self.adaptive, AdaptiveSettings):
            raise SplitInferError(f"adaptive {self.adaptive!r} is not an AdaptiveSettings")
        _positive("initial_bandwidth_bps", self.initial_bandwidth_bps)
        if not (self.initial_rtt_ms is None or (_is_number(self.initial_rtt_ms) and self.initial_rtt_ms >= 0)):
            raise SplitInferError(f"initial_rtt_ms {self.initial_rtt_ms!r} is not a finite number ≥ 0 or None")

    @property
    def tls_mode(self) -> str:
        """ "off", "tls" (the server's certificate is checked) or "mutual" (this client shows its own)."""
        if not (self.tls or self.tls_ca or self.tls_cert or self.tls_key):
            return "off"
        return "mutual" if self.tls_cert else "tls"


def _is_int(value: object) -> bool:
    # numbers.Integral takes numpy's integers too; a bool is not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: object) -> None:
    if not (_is_number(value) and value > 0):  # type: ignore[operator]
        raise SplitInferError(f"{name} {value!r} is not a finite number > 0")


def _check_token(token: str | None) -> None:
    # gRPC refuses such metadata only at the first call, and with words that do not say why. The
    # message leaves the token out: it is a secret.
    if token is None:
        return
    if (
        not isinstance(token, str)
        or not token
        or not token.isascii()
        or not token.isprintable()
        or any(c.isspace() for c in token)
    ):
        raise SplitInferError("token: must be non-empty printable ASCII without spaces")


def _checked_metadata(metadata: object) -> tuple[tuple[str, str], ...]:
    """`metadata` as (key, value) pairs, each checked as gRPC would check it at the first call."""
    pairs = list(metadata.items()) if isinstance(metadata, Mapping) else metadata
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise SplitInferError(f"metadata {metadata!r} is not a mapping or a sequence of (key, value) pairs")
    checked = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise SplitInferError(f"metadata {pair!r} is not a (key, value) pair of strings")
        key, value = pair
        if not _METADATA_KEY.fullmatch(key) or key.startswith("grpc-") or key.endswith("-bin"):
            raise SplitInferError(
                f"metadata key {key!r} is not lowercase a-z, 0-9, '-', '_', '.' (nor a 'grpc-' or '-bin' key)"
            )
        if key == "authorization":
            raise SplitInferError("metadata key 'authorization' is the token's: pass token (--token)")
        if not (value.isascii() and value.isprintable()):
            raise SplitInferError(f"metadata {key!r}: value {value!r} is not printable ASCII")
        checked.append((key, value))
    return tuple(checked)
