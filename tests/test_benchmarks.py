"""Every benchmark script runs in its tiny setting, so none can rot unnoticed (issue 14, point 7).

Each ``benchmarks/bench_*.py`` (found by glob: a new script is covered without editing this file)
runs in a subprocess with ``GRADSIM_BENCH_TINY=1`` (sizes shrunk to seconds, every code path
kept), its results folder (``GRADSIM_BENCH_RESULTS``) and ``GRADSIM_CACHE`` in a temporary folder.
It must exit 0, print at least one ratio line ("A / B ... = number") and write its results JSON
with at least one finite, positive ratio in it. The tiny figures themselves are not checked:
timings at these sizes on a shared machine mean nothing.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))
# "loop / batched =    3.1x", "ours / inference (best vs best) = 1.01", "peak memory / all features at float32 = 0.2"
RATIO_LINE = re.compile(r"\w / \w[^=\n]*= *[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?x?\b")
RATIO_KEY = re.compile(r"ratio|_over_")
TIMEOUT_S = 240


def _ratios(node, key: str = "") -> list[float]:
    """Every number in a JSON tree stored under a key that names a ratio (or inside one)."""
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in _ratios(v, k if RATIO_KEY.search(str(k)) else key)]
    if isinstance(node, list):
        return [r for v in node for r in _ratios(v, key)]
    if isinstance(node, (int, float)) and not isinstance(node, bool) and key:
        return [float(node)]
    return []


def test_benchmarks_found():
    assert len(SCRIPTS) >= 6, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_runs_tiny(script: Path, tmp_path: Path):
    results = tmp_path / "results"
    env = {**os.environ, "GRADSIM_BENCH_TINY": "1", "GRADSIM_BENCH_RESULTS": str(results),
           "GRADSIM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}:\n{output[-4000:]}"
    assert RATIO_LINE.search(proc.stdout), f"{script.name} printed no ratio line:\n{proc.stdout[-4000:]}"
    written = sorted(results.glob("*-tiny.json"))
    assert [p.name for p in written] == [f"{script.stem.removeprefix('bench_')}-tiny.json"], written
    ratios = _ratios(json.loads(written[0].read_text()))
    assert ratios, f"{written[0].name} holds no ratio"
    assert all(math.isfinite(r) and r > 0 for r in ratios), ratios
