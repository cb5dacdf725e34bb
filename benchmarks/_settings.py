"""What every benchmark script shares: the tiny setting and where results go.

``GRADSIM_BENCH_TINY=1`` (anything but empty or 0) shrinks a script's sizes to seconds while keeping
every code path, for tests/test_benchmarks.py, and writes ``<name>-tiny.json`` instead of
``<name>.json``; ``GRADSIM_BENCH_RESULTS=DIR`` moves the results folder (default
``benchmarks/results``).
"""
from __future__ import annotations

import os
from pathlib import Path

TINY = os.environ.get("GRADSIM_BENCH_TINY", "") not in ("", "0")


def exit_if_unmet(requirements: dict[str, bool]) -> None:
    """Exit with an error naming every requirement that is False, so ``make bench`` names the
    script; not in the tiny setting, whose sizes are too small for speed ratios to mean anything."""
    unmet = [name for name, met in requirements.items() if not met]
    if unmet and not TINY:
        raise SystemExit("requirements failed: " + "; ".join(unmet))


def results_path(name: str) -> Path:
    """``<results folder>/<name>.json``, or ``<name>-tiny.json`` in the tiny setting."""
    folder = Path(os.environ.get("GRADSIM_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
    return folder / (f"{name}-tiny.json" if TINY else f"{name}.json")
