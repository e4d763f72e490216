"""What one client may hold of a server: how many calls it has open, and how long any call may wait
for its next request message.

gRPC's sync server gives every call a worker from the moment it starts, and a call that never sends
its message (or a stream that stops sending) holds that worker until the client lets go. HTTP/2's
limit on concurrent streams bounds one connection; these limits bound the rest:

- **per client**: a client (the token's client id) may have at most `max_calls_per_client` calls
  open; one more is refused RESOURCE_EXHAUSTED at once, naming the limit (EdgeClient backs off and
  retries it). Calls without tokens are not limited per client: anonymous clients cannot be told
  apart, and a carrier's NAT puts thousands of phones behind one address.
- **idle**: a call waiting longer than `idle_timeout_s` for a request message (a unary call's one
  message, or a stream's next) is cancelled, so a client that went silent gives its worker back.
- **saturation**: when the open calls take every worker but one, the server's health turns
  NOT_SERVING (cloud_runtime.saturation) until they drop back, so a load balancer sends new work
  elsewhere while this replica cannot take it.

Every call is served as a request-streaming one here, whatever its kind: gRPC calls a unary
handler only once the message has arrived, so a call waiting for it could neither be counted from
its start nor timed out. The method's own handler then gets its one message, as gRPC would give it.
Health checks are not counted: a probe must get through whoever holds the workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from cloud_runtime.auth import ANONYMOUS, OPEN_PREFIXES, current_client
from cloud_runtime.periodic import Periodic

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT_S = 30.0
# How often silent calls are looked for: an idle call is cancelled within this of its timeout.
_WATCH_INTERVAL_S = 0.25


class CallLimits(grpc.ServerInterceptor):
    """Counts each client's open calls and cancels calls idle for `idle_timeout_s`.

    `max_calls_per_client`: open calls allowed per authenticated client (None: no limit).
    `max_workers`: the server's workers; `on_saturated(bool)` is told when the open calls come to
    take all of them but one, and when they no longer do."""

    def __init__(
        self,
        *,
        max_workers: int,
        max_calls_per_client: int | None,
        idle_timeout_s: float,
        on_saturated: Callable[[bool], None] | None = None,
    ) -> None:
        self.max_workers = max_workers
        self._per_client = max_calls_per_client
        self._idle_timeout_s = idle_timeout_s
        self._saturation_at = max(1, max_workers - 1)
        self._on_saturated = on_saturated
        self._lock = threading.Lock()
        self._open = 0
        self._by_client: dict[str, int] = {}
        self._saturated = False
        # Calls waiting for a message now: id → (when the wait started, the call's context).
        self._waiting: dict[int, tuple[float, grpc.ServicerContext]] = {}
        # Method → (its handler, the handler that limits it).
        self._limited_handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._watch = Periodic(self._cancel_idle, _WATCH_INTERVAL_S, "splitinfer-idle-calls")

    def close(self) -> None:
        self._watch.stop()

    @property
    def open_calls(self) -> int:
        with self._lock:
            return self._open

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        # Built once per method's handler, not per call: this runs on every call's path.
        known = self._limited_handlers.get(method)
        if known is None or known[0] is not handler:
            known = self._limited_handlers[method] = (handler, self._limited(handler, method))
        return known[1]

    def _limited(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        unary_request = not handler.request_streaming
        inner = (
            handler.unary_unary or handler.unary_stream
            if unary_request
            else handler.stream_unary or handler.stream_stream
        )

        def behaviour(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            client = current_client()
            refusal = self._admit(client)
            if refusal:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            # Called once the call has ended, however it ended (answered, refused, cancelled).
            if not context.add_callback(lambda: self._release(client)):
                self._release(client)
            requests = self._watched(request_iterator, context, method)
            if not unary_request:
                return inner(requests, context)
            request = next(requests, None)
            if request is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method} takes exactly one request message")
            return inner(request, context)

        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _admit(self, client: str) -> str:
        """ "" when `client` may open one more call (counted), else why not."""
        with self._lock:
            held = self._by_client.get(client, 0)
            if self._per_client is not None and client != ANONYMOUS and held >= self._per_client:
                return (
                    f"client {client!r} has {held} calls open, the most one client may have "
                    f"(max_calls_per_client {self._per_client}): retry once one has ended"
                )
            self._by_client[client] = held + 1
            self._open += 1
            changed = self._saturation_changed()
        if changed is not None and self._on_saturated is not None:
            self._on_saturated(changed)
        return ""

    def _release(self, client: str) -> None:
        with self._lock:
            held = self._by_client.get(client, 0) - 1
            if held > 0:
                self._by_client[client] = held
            else:
                # Client ids come and go; the map holds only those with calls open.
                self._by_client.pop(client, None)
            self._open -= 1
            changed = self._saturation_changed()
        if changed is not None and self._on_saturated is not None:
            self._on_saturated(changed)

    def _saturation_changed(self) -> bool | None:
        """The new saturation when it changed with the last count (under the lock), else None."""
        saturated = self._open >= self._saturation_at
        if saturated == self._saturated:
            return None
        self._saturated = saturated
        return saturated

    def _watched(self, requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
        """`requests`, each wait for the next message registered with the idle watch. A call the
        watch cancelled ends its iteration (its handler returns; the client sees CANCELLED)."""
        key = id(context)
        while True:
            self._waiting[key] = (time.monotonic(), context)
            try:
                request = next(requests)
            except StopIteration:
                return
            except grpc.RpcError:
                if not context.is_active():
                    # Cancelled: by the client, or by the watch for its silence (logged there).
                    return
                raise
            finally:
                self._waiting.pop(key, None)
            yield request

    def _cancel_idle(self) -> None:
        limit = time.monotonic() - self._idle_timeout_s
        # A copy: calls register and leave from their own threads while this looks.
        for key, (since, context) in self._waiting.copy().items():
            if since < limit and self._waiting.pop(key, None) is not None:
                log.warning(
                    "cancelled a call from %s: no request message for %.0f s (idle_timeout_s)",
                    context.peer(),
                    self._idle_timeout_s,
                )
                context.cancel()
