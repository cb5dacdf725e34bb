"""Speed of seed 001's pair loss: ``alignment.gradient_alignment_loss`` (one Gram matrix and a
same-class mask) against ``gradient_alignment_loss_loop`` of tests/test_alignment.py (one Python
iteration per pair, the tests' reference).

Setting: 128 input gradients of a 32 px image (3 x 32 x 32 = 3072 values each), 10 classes, both
forms, forward value plus the backward to the gradients (what training needs). The methods are
timed in interleaved rounds (loop, batched, loop, batched, ...) so a burst of load from other
processes hits both alike; each method's best round counts. Requirement: loop / batched >= 20.
Torch threads: ``training.cpu_threads()``, one per available core, the policy gradient-alignment
training uses (on a busy machine OpenMP threads spinning for each other slow the loop most, which
raises the ratio; the thread count and load average are recorded).

Run: ``python benchmarks/bench_alignment.py`` (about a minute on 2 cores); writes
``benchmarks/results/alignment.json``.
Tiny setting and results folder: ``_settings.py``."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from gradsim_utils import alignment, training

from _settings import TINY, exit_if_unmet, results_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_alignment import gradient_alignment_loss_loop  # noqa: E402  (the tests' per-pair reference)

RESULTS = results_path("alignment")
N, SHAPE, CLASSES, ROUNDS = (24, (3, 8, 8), 4, 2) if TINY else (128, (3, 32, 32), 10, 3)
REQUIRED_RATIO = 20.0


def _timed(fn, grads: torch.Tensor, labels: torch.Tensor, form: str) -> float:
    """Seconds for the loss value and its gradient with respect to ``grads``."""
    g = grads.detach().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(g, labels, form=form, reduction="sum")
    torch.autograd.grad(loss, g)
    return time.perf_counter() - start


def main() -> dict:
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(N, *SHAPE, generator=gen)
    labels = torch.randint(0, CLASSES, (N,), generator=gen)
    n_pairs = int(alignment.same_class_pairs(labels).sum())
    out = {"n_samples": N, "dims": int(torch.tensor(SHAPE).prod()), "n_same_class_pairs": n_pairs,
           "threads": torch.get_num_threads(), "rounds": ROUNDS, "forms": {},
           "machine": {"cpu_count": os.cpu_count(), "load_1min": os.getloadavg()[0],
                       "platform": platform.platform(), "torch": torch.__version__}}
    for form in alignment.FORMS:
        ref = gradient_alignment_loss_loop(grads, labels, form=form, reduction="sum")
        got = alignment.gradient_alignment_loss(grads, labels, form=form, reduction="sum")
        if not torch.allclose(ref, got, rtol=1e-4):
            raise AssertionError(f"{form}: batched {got.item()} != loop {ref.item()}")
        times = {"loop": [], "batched": []}
        for _ in range(ROUNDS):
            times["loop"].append(_timed(gradient_alignment_loss_loop, grads, labels, form))
            times["batched"].append(_timed(alignment.gradient_alignment_loss, grads, labels, form))
        best = {k: min(v) for k, v in times.items()}
        ratio = best["loop"] / best["batched"]
        out["forms"][form] = {"loop_s": best["loop"], "batched_s": best["batched"], "ratio": ratio,
                              "meets_requirement": ratio >= REQUIRED_RATIO}
        print(f"{form:9s}: loop {best['loop'] * 1e3:8.1f} ms  batched {best['batched'] * 1e3:6.2f} ms  "
              f"loop / batched = {ratio:6.1f}x  (>= {REQUIRED_RATIO:g}x: {ratio >= REQUIRED_RATIO})")
    out["min_ratio"] = min(f["ratio"] for f in out["forms"].values())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"{N} samples, {n_pairs} same-class pairs; written to {RESULTS}")
    exit_if_unmet({f"{form}: loop / batched >= {REQUIRED_RATIO:g}x": f["meets_requirement"]
                   for form, f in out["forms"].items()})
    return out


if __name__ == "__main__":
    with training.cpu_threads():  # one torch thread per available core, as training uses
        main()
