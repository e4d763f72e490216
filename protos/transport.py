"""What both gRPC ends agree on beyond the .proto: the largest message either accepts, and the
metadata keys one side sets for the other to read."""

from __future__ import annotations

# Activations of the largest cuts in the zoo are a few MB; 64 MiB leaves room for batches of them
# without letting a single message exhaust a server's memory (gRPC's own default is 4 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Trailing metadata of a RESOURCE_EXHAUSTED refusal for a full queue: when to retry, in ms
# (set by cloud_runtime.servicer, read by edge_runtime.retry).
RETRY_AFTER_KEY = "retry-after-ms"
# The most bytes of a file one FileChunk of FetchBundleFile carries: small next to the message
# limit, so a fetch never needs a larger one, and large enough that a head of a few MB is a
# handful of messages.
FILE_CHUNK_BYTES = 256 * 1024
