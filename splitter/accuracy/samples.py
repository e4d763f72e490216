"""Samples: the inputs accuracy is measured and quantisation calibrated on, in two parts that never
overlap.

- **evaluation**: the inputs the task agreement of every (cut, codec) is measured on (the
  profile), and that export verifies a bundle on;
- **calibration**: the inputs an int8 head's activation ranges are fitted to, never evaluated on.

Where they come from:
- `--samples PATH`: a folder of images (.jpg, .jpeg, .png; preprocessed as the model declares) or a
  `.npy` / `.npz` file of preprocessed input tensors (N×… or one sample's shape). They are split
  deterministically by content: ordered by each sample's sha256, every fourth (from the first) goes
  to calibration, the rest to evaluation, so renaming or reordering files changes nothing.
- a registered image model without `--samples`: the photos shipped with scikit-image, expanded
  into views (crops, mirror images; splitter.models.evaluation_images) for evaluation, and the
  disjoint calibration photos for calibration.
- an .onnx file without `--samples`: seeded random tensors, marked `random`: agreement measured on
  noise says nothing about the task, so lossy codecs are refused unless asked for.

Each part is recorded (what it is, how many, a sha256 over its tensors) in the profile and the
manifest, so a bundle says exactly what it was verified on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.errors import SplitInferError

Feed = dict[str, np.ndarray]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_EVALUATION = 64
DEFAULT_CALIBRATION = 16
# Every CALIBRATION_EVERY-th sample by content order goes to calibration.
CALIBRATION_EVERY = 4


@dataclass(frozen=True)
class SampleSet:
    description: str
    names: tuple[str, ...]
    feeds: tuple[Feed, ...]
    random: bool = False

    def __len__(self) -> int:
        return len(self.feeds)

    @property
    def sha256(self) -> str:
        return _sha256(self.feeds)

    def record(self) -> dict:
        """What a profile or a manifest says about these samples."""
        return {"description": self.description, "count": len(self), "sha256": self.sha256, "random": self.random}


@dataclass(frozen=True)
class Samples:
    evaluation: SampleSet
    calibration: SampleSet

    def record(self) -> dict:
        return {"evaluation": self.evaluation.record(), "calibration": self.calibration.record()}


def default_samples(source, evaluation: int = DEFAULT_EVALUATION, *, photos: bool = True) -> Samples:
    """The samples a model gets without `--samples` (see the module docstring): photos for a model
    that takes one image when `photos`, else random tensors."""
    if photos and source.preprocess is not None and len(source.input_shapes) == 1:
        from splitter.models import calibration_photos, evaluation_images

        views = evaluation_images(evaluation)
        calibration = calibration_photos()
        return Samples(
            SampleSet(
                f"{len(views)} scikit-image photos and crops and mirror images of them",
                tuple(p.name for p in views),
                tuple(source.inputs_from_image(p.image) for p in views),
            ),
            SampleSet(
                f"{len(calibration)} other scikit-image images",
                tuple(p.name for p in calibration),
                tuple(source.inputs_from_image(p.image) for p in calibration),
            ),
        )
    rng = np.random.default_rng(0)
    random = [
        {n: rng.standard_normal(s).astype(np.float32) for n, s in source.input_shapes.items()}
        for _ in range(evaluation + DEFAULT_CALIBRATION)
    ]
    what = "seeded standard-normal tensors (random inputs: agreement not meaningful)"
    return Samples(
        SampleSet(
            f"{evaluation} {what}",
            tuple(f"random-{i}" for i in range(evaluation)),
            tuple(random[:evaluation]),
            random=True,
        ),
        SampleSet(
            f"{DEFAULT_CALIBRATION} {what}",
            tuple(f"random-{evaluation + i}" for i in range(DEFAULT_CALIBRATION)),
            tuple(random[evaluation:]),
            random=True,
        ),
    )


def check_samples_path(path: Path) -> None:
    """Fails fast, before any long work, on a path that cannot be samples."""
    if not path.exists():
        raise SplitInferError(f"--samples {str(path)!r} does not exist")
    if path.is_dir():
        if not _image_files(path):
            raise SplitInferError(f"--samples {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif path.suffix not in (".npy", ".npz"):
        raise SplitInferError(
            f"--samples {str(path)!r} is neither a folder of images nor a .npy/.npz file of input tensors"
        )


def load_samples(path: Path, source) -> Samples:
    """The user's samples for `source`, split into evaluation and calibration."""
    check_samples_path(path)
    if path.is_dir():
        named = _load_images(path, source)
        what = f"images from {path}"
    else:
        named = _load_tensors(path, source)
        what = f"input tensors from {path}"
    if len(named) < 2:
        raise SplitInferError(
            f"--samples {str(path)!r} holds {len(named)} sample; at least 2 are needed (calibration and evaluation)"
        )
    ordered = sorted(named, key=lambda item: _sha256([item[1]]))
    calibration = ordered[::CALIBRATION_EVERY]
    evaluation = [item for index, item in enumerate(ordered) if index % CALIBRATION_EVERY]
    return Samples(_set(f"{len(evaluation)} {what}", evaluation), _set(f"{len(calibration)} {what}", calibration))


def _set(description: str, named: list[tuple[str, Feed]]) -> SampleSet:
    return SampleSet(description, tuple(n for n, _ in named), tuple(f for _, f in named))


def _sha256(feeds) -> str:
    """Over every tensor of `feeds` in order, with its input's name."""
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load_images(folder: Path, source) -> list[tuple[str, Feed]]:
    from protos.preprocess import load_image

    if source.preprocess is None or len(source.input_shapes) != 1:
        raise SplitInferError(
            f"--samples {str(folder)!r} is a folder of images, but model {source.model_id!r} takes no image "
            "(declare --preprocess, or give a .npy/.npz of input tensors)"
        )
    samples = []
    for file in _image_files(folder):
        image = load_image(file)
        if image.ndim != 3 or image.shape[2] != 3:
            raise SplitInferError(f"sample {str(file)!r} has shape {image.shape}, expected an RGB image")
        samples.append((file.name, source.inputs_from_image(image)))
    return samples


def _load_tensors(path: Path, source) -> list[tuple[str, Feed]]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SplitInferError(f"--samples {str(path)!r} cannot be read as {path.suffix}: {err}") from err
    shapes = source.input_shapes
    arrays = dict(loaded) if path.suffix == ".npz" else {next(iter(shapes)): loaded}
    if set(arrays) != set(shapes):
        raise SplitInferError(
            f"--samples {str(path)!r} holds arrays {sorted(arrays)}; model {source.model_id!r} takes {sorted(shapes)}"
        )
    counts = set()
    for name, array in arrays.items():
        expected = shapes[name]
        if expected[0] != 1 or array.ndim != len(expected) or array.shape[1:] != expected[1:]:
            raise SplitInferError(
                f"--samples {str(path)!r}: array {name!r} has shape {array.shape}; expected N×{'×'.join(map(str, expected[1:]))} "
                f"(model input {name!r} is {'×'.join(map(str, expected))})"
            )
        if arrays[name].dtype != np.float32:
            raise SplitInferError(f"--samples {str(path)!r}: array {name!r} is {arrays[name].dtype}, expected float32")
        if not np.isfinite(arrays[name]).all():
            raise SplitInferError(f"--samples {str(path)!r}: array {name!r} holds NaN or infinite values")
        counts.add(arrays[name].shape[0])
    if len(counts) != 1:
        raise SplitInferError(f"--samples {str(path)!r}: the arrays hold different numbers of samples {sorted(counts)}")
    (count,) = counts
    return [
        (f"{path.name}[{i}]", {n: np.ascontiguousarray(a[i : i + 1]) for n, a in arrays.items()}) for i in range(count)
    ]
