"""Fixtures shared by the splitter's pipeline tests: the small registered model at 96x96, built once
per session (exporting and calibrating it is the slow part), its cuts and its sample photos."""

from __future__ import annotations

import numpy as np
import pytest

from splitter.graph.cuts import Cut
from splitter.pipeline import model_cuts
from splitter.sources import ModelSource, load_source

SMALL_MODEL = "mobilenet_v2_035"
SMALL_SHAPE = (1, 3, 96, 96)


@pytest.fixture(scope="session")
def mobilenet_source() -> ModelSource:
    return load_source(SMALL_MODEL, input_shape=SMALL_SHAPE)


@pytest.fixture(scope="session")
def mobilenet_cuts(mobilenet_source: ModelSource) -> list[Cut]:
    return model_cuts(mobilenet_source)


@pytest.fixture(scope="session")
def mobilenet_samples(mobilenet_source: ModelSource) -> list[tuple[str, dict[str, np.ndarray]]]:
    return mobilenet_source.samples(4)
