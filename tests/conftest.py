"""Shared test set-up: every test session uses its own empty cache folder."""
import os
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache():
    """Point GRADSIM_CACHE at a fresh folder so tests exercise the cold path."""
    old = os.environ.get("GRADSIM_CACHE")
    with tempfile.TemporaryDirectory(prefix="gradsim-test-cache-") as tmp:
        os.environ["GRADSIM_CACHE"] = tmp
        yield tmp
    if old is None:
        os.environ.pop("GRADSIM_CACHE", None)
    else:
        os.environ["GRADSIM_CACHE"] = old
