"""Shared test set-up: every test session uses its own empty cache folder; under pytest-xdist
(``make test``) each worker computes on its own share of the cores, and the longest test files start first."""
import os
import tempfile

import pytest

#: The test files that take longest (whole books, every chapter on a reader's model): scheduled
#: first, so that the workers share the rest while these run.
LONGEST_FILES = ("test_book.py", "test_your_models.py")


def pytest_configure(config):
    """Under xdist, pin worker k of n to every n-th core from the k-th: torch (and every notebook
    kernel the worker starts, which inherits the mask) then uses that many threads
    (``training.cpu_threads``) instead of all the cores the other workers use too."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw"))::count] or cores)


def pytest_collection_modifyitems(config, items):
    """The longest files first (in the order of ``LONGEST_FILES``), the others as collected."""
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
    items.sort(key=rank)


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
