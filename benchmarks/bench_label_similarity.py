"""Memory and time of the label-similarity statistics at ImageNet scale (seed 002's setting).

Streams 50,000 feature vectors of 7,616 channels (ResNet-34's conv channels, downsample excluded)
over 1,000 classes into ``class_statistics.ClassStats`` in chunks of generated random data, then
computes the full 1,000 x 1,000 similarity matrices (Welch t, pure GAP; each a C x K statistic and
one cosine matrix). Holding all features at float32 would take 1.5 GB.

Measured: the peak of traced Python/numpy/torch allocations during streaming (``tracemalloc``,
which counts numpy's and torch's CPU buffers through their allocator hooks, minus what existed
before) and the growth of the process's peak resident set size (``resource``); the wall time of
streaming and of the similarity matrices (best of two).
Requirements: peak memory < 1 GiB; similarity matrices < 10 s. Ratio printed: peak memory (the
larger of the two measures) / the memory of all features at float32.

Run: ``python benchmarks/bench_label_similarity.py`` (about a minute on 2 cores); writes
``benchmarks/results/label_similarity.json``.
Tiny setting and results folder: ``_settings.py``."""
from __future__ import annotations

import json
import os
import platform
import resource
import time
import tracemalloc

import numpy as np
import torch

from gradsim_utils import class_statistics as cs
from gradsim_utils import label_similarity as ls

from _settings import TINY, exit_if_unmet, results_path

RESULTS = results_path("label_similarity")
N_IMAGES, N_CHANNELS, N_CLASSES, CHUNK = (600, 256, 20, 200) if TINY else (50_000, 7_616, 1_000, 1_000)
GIB = 2 ** 30


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _stream(seed: int = 0) -> cs.ClassStats:
    """Feed N_IMAGES random non-negative 'GAP' vectors with class-dependent means, CHUNK at a time."""
    rng = np.random.default_rng(seed)
    class_shift = rng.random((N_CLASSES, N_CHANNELS), dtype=np.float32)
    labels = np.repeat(np.arange(N_CLASSES), N_IMAGES // N_CLASSES)  # the ImageNet validation layout
    stats = cs.ClassStats(N_CLASSES, N_CHANNELS)
    for start in range(0, N_IMAGES, CHUNK):
        y = labels[start:start + CHUNK]
        x = rng.random((len(y), N_CHANNELS), dtype=np.float32)
        x += class_shift[y]
        stats.update(x, y)
    return stats


def main() -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    rss_before = _rss_peak_bytes()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    start = time.perf_counter()
    stats = _stream()
    stream_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_delta = _rss_peak_bytes() - rss_before

    matrix_times = []
    for _ in range(2):
        start = time.perf_counter()
        mats = ls.similarity_matrices(stats)
        matrix_times.append(time.perf_counter() - start)
    assert mats["Welch t"].shape == (N_CLASSES, N_CLASSES) and np.isfinite(mats["Welch t"]).all()
    top = ls.top_k_similar(mats["Welch t"], 9)
    assert top.shape == (N_CLASSES, 9) and not (top == np.arange(N_CLASSES)[:, None]).any()

    result = {
        "setting": {"images": N_IMAGES, "channels": N_CHANNELS, "classes": N_CLASSES, "chunk": CHUNK},
        "all_features_float32_gib": N_IMAGES * N_CHANNELS * 4 / GIB,
        "stream_peak_traced_gib": (peak - base) / GIB,
        "stream_peak_rss_delta_gib": rss_delta / GIB,
        "peak_memory_over_all_features": max(peak - base, rss_delta) / (N_IMAGES * N_CHANNELS * 4),
        "stream_seconds": stream_s,
        "similarity_matrices_seconds": min(matrix_times),
        "requirements": {"peak_memory_below_1_gib": max(peak - base, rss_delta) < GIB,
                         "similarity_matrices_below_10_s": min(matrix_times) < 10},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "numpy": np.__version__, "load_average": os.getloadavg()},
    }
    print(f"streaming {N_IMAGES} x {N_CHANNELS} over {N_CLASSES} classes: {stream_s:.1f} s, peak traced memory "
          f"{result['stream_peak_traced_gib']:.3f} GiB, peak RSS growth {result['stream_peak_rss_delta_gib']:.3f} GiB "
          f"(all features at float32: {result['all_features_float32_gib']:.2f} GiB)")
    print(f"full {N_CLASSES} x {N_CLASSES} similarity matrices (Welch t + pure GAP): "
          f"{result['similarity_matrices_seconds']:.2f} s")
    print(f"peak memory / all features at float32 = {result['peak_memory_over_all_features']:.3f}")
    print("requirements:", result["requirements"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    exit_if_unmet(result["requirements"])
    return result


if __name__ == "__main__":
    main()
