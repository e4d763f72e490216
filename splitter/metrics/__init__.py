"""Task metrics, by name: whether a split model agrees with the unsplit one on a sample. Importing
this package registers the built-ins; plug-ins come in through the `splitinfer.metrics`
entry-point group (see _registry)."""

from splitter.metrics import builtins, detection, ocr  # noqa: F401  (registration side effect)
from splitter.metrics._registry import (
    ENTRY_POINT_GROUP,
    Metric,
    create_metric,
    list_metrics,
    register_metric,
    reset_plugins,
)

__all__ = ["ENTRY_POINT_GROUP", "Metric", "create_metric", "list_metrics", "register_metric", "reset_plugins"]
