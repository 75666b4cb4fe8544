"""Fixtures: tiny synthetic Visium data (in memory) and access to the shared real data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest

from _kgl_fixtures import has_mobilenet_weights, make_visium


@pytest.fixture
def kgl_log(caplog):
    """Capture records of the ``kgl`` logger (it does not propagate to the root logger)."""
    from kgl._logging import logger

    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(10)  # DEBUG
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture
def visium() -> ad.AnnData:
    return make_visium()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from kgl._settings import settings

    try:
        return settings.find_data("glomeruli-pas-tiles").parent
    except FileNotFoundError as e:
        pytest.skip(f"shared data not available: {e}")


@pytest.fixture
def mobilenet_weights() -> None:
    if not has_mobilenet_weights():
        pytest.skip("torchvision MobileNet_V2 IMAGENET1K_V1 weights not available offline")
