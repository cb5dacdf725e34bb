"""Throughput of SFAM maps for a batch of 64 query-support pairs (seed 004, chapter 8).

Methods, on the same pairs and the same metric-learning model (quick profile's architecture,
tiny ResNet-18 of width 8 at 64 px; random weights: speed does not depend on them):
  (a) forward  one batched backbone pass over the 128 distinct images, nothing else;
  (b) ours     the same pass, then ``sfam.pair_maps`` for all seven methods (query and support
               maps, upsampled to 64 px): gathers and matrix products, no per-pair or per-channel loop;
  (c) loop     the direct transcription: per pair, one backbone pass for the query and one for the
               support, then Eq. 2 and Eq. 3 with a Python loop over channels (SFAM only).
Every method is timed once per round and the rounds interleave them; each method's best round
counts. Checked: (b)'s SFAM maps equal (c)'s. Requirements: b/a >= 0.8, b/c >= 5 (pairs/s).

Run: ``python benchmarks/bench_sfam.py`` (about a minute on 2 cores); writes
``benchmarks/results/sfam.json``.
Tiny setting and results folder: ``_settings.py``."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch

from gradsim_utils import metric_learning as ml, sfam

from _settings import TINY, exit_if_unmet, results_path

RESULTS = results_path("sfam")
N_PAIRS, IMAGE_SIZE = (4, 64) if TINY else (64, 64)
BUDGET_S = 0 if TINY else 60
MIN_ROUNDS, MAX_ROUNDS = 2, 8


def _forward(model, images, query, support):
    """(a) One batched pass over the distinct images."""
    return model.features(images, batch_size=128)


def _ours(model, images, query, support):
    """(b) One batched pass, then every method's query and support maps for all pairs at once."""
    feats = model.features(images, batch_size=128)
    return sfam.pair_maps(feats, query, support, "euclidean", image_size=IMAGE_SIZE, support_maps=True)


@torch.no_grad()
def _loop(model, images, query, support):
    """(c) Per pair: two backbone passes, CIS and the channel sum written out channel by channel."""
    maps = []
    for q, s in zip(query.tolist(), support[:, 0].tolist()):
        a_q = model.feature_maps(model.prepare(images[q:q + 1]))[0]
        a_s = model.feature_maps(model.prepare(images[s:s + 1]))[0]
        v_q, v_s = a_q.mean((1, 2)), a_s.mean((1, 2))
        n = len(v_q)
        d2 = [(v_q[c] - v_s[c]) ** 2 for c in range(n)]
        total = sum(d2)
        omega = [(total - d2[c]) / ((n - 1) * total) for c in range(n)]
        low, high = min(omega), max(omega)
        heat = torch.zeros_like(a_q[0])
        for c in range(n):
            heat += (omega[c] - low) / (high - low) * a_q[c]
        maps.append(sfam.upsample(heat, IMAGE_SIZE))
    return torch.stack(maps)


METHODS = {"forward": _forward, "ours": _ours, "loop": _loop}


def main() -> dict:
    torch.manual_seed(0)
    cfg = ml.config_for_profile("quick")
    model = ml.build_metric_model("euclidean", cfg).eval()
    images = torch.randint(0, 256, (2 * N_PAIRS, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    query, support = torch.arange(N_PAIRS), torch.arange(N_PAIRS, 2 * N_PAIRS)[:, None]
    ours = _ours(model, images, query, support)["sfam"][0]
    loop = _loop(model, images, query, support)
    max_diff = float((ours - loop).abs().max() / loop.abs().max())
    assert max_diff < 1e-4, f"batched and per-pair SFAM maps differ (relative {max_diff:.1e})"
    rounds, deadline, last = [], time.perf_counter() + BUDGET_S, 0.0
    while len(rounds) < MAX_ROUNDS and (len(rounds) < MIN_ROUNDS or time.perf_counter() + last < deadline):
        start, seconds = time.perf_counter(), {}
        for name, fn in METHODS.items():
            t = time.perf_counter()
            fn(model, images, query, support)
            seconds[name] = time.perf_counter() - t
        rounds.append(seconds)
        last = time.perf_counter() - start
    best = {name: min(r[name] for r in rounds) for name in METHODS}
    result = {
        "n_pairs": N_PAIRS, "n_images": len(images), "image_size": IMAGE_SIZE, "model": cfg.backbone("euclidean"),
        "base_width": cfg.base_width, "rounds": len(rounds), "max_relative_difference_ours_vs_loop": max_diff,
        "img_per_s": {name: round(len(images) / s, 1) for name, s in best.items()},
        "pairs_per_s": {name: round(N_PAIRS / s, 1) for name, s in best.items()},
        "ratio_ours_over_forward": round(best["forward"] / best["ours"], 3),
        "ratio_ours_over_loop": round(best["loop"] / best["ours"], 2),
        "paired_ratio_ours_over_loop_median": round(statistics.median(r["loop"] / r["ours"] for r in rounds), 2),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    for name in METHODS:
        print(f"{name:8s} {result['img_per_s'][name]:8.1f} img/s  {result['pairs_per_s'][name]:8.1f} pairs/s")
    print(f"ours / forward = {result['ratio_ours_over_forward']:.3f} (want >= 0.8); "
          f"ours / loop = {result['ratio_ours_over_loop']:.1f}x (want >= 5)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    exit_if_unmet({"ours / forward >= 0.8": result["ratio_ours_over_forward"] >= 0.8,
                   "ours / loop >= 5x": result["ratio_ours_over_loop"] >= 5})
    return result


if __name__ == "__main__":
    main()
