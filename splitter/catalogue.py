"""Every model usable by name, in one list: the networks defined here (splitter.models, built with
torch, trained or seeded) and the trained ONNX files installed packages ship (splitter.packaged).
`load_source` resolves a name against it, `splitinfer models` prints it, and an unknown name's
error lists it, so no name is accepted that the list does not show."""

from __future__ import annotations

from dataclasses import dataclass

from splitter.packaged import PACKAGED_MODELS


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    # Where it comes from: "defined here", or the package whose ONNX file it is.
    origin: str


def model_catalogue() -> list[ModelEntry]:
    """The models defined here (sorted), then the packaged ones."""
    from splitter.models import list_models, model_info

    defined = [ModelEntry(name, model_info(name).description, "defined here") for name in list_models()]
    packaged = [ModelEntry(m.name, m.description, f"ONNX from {m.package}") for m in PACKAGED_MODELS.values()]
    return defined + packaged


def model_names() -> list[str]:
    return [entry.name for entry in model_catalogue()]
