"""Throughput of gradient-weight extraction, ``extract.representations`` at ``layer4``.

Methods, on the same images, model and memory format (the model is set channels-last here; if
``extract`` chooses another format for its pass, the model keeps it and every method after the
warm-up runs in it; the format the timings ran in is recorded):
  (a) inference  plain forward under ``torch.inference_mode``, same batch size;
  (b) ours       ``extract.representations``: logits, probabilities, features, gradient weights;
  (c) loop       the usual per-image way: a forward hook keeps the layer's output, then one
                 forward and one ``torch.autograd.grad(y_c, F)`` per image.
Every (method, batch size) is timed once per round and the rounds interleave all of them, so a
burst of load from other processes hits all methods alike; each method's best round counts.
Requirements: b/a >= 0.8 (gradients cost next to nothing beyond the forward) and b/c >= 2.

Run: ``python benchmarks/bench_extract.py`` (under 3 minutes on 2 cores); writes
``benchmarks/results/extract.json``.
Tiny setting and results folder: ``_settings.py``."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch
import torchvision
from torch import nn

from gradsim_utils import extract
from gradsim_utils.nets import build_tiny_resnet

from _settings import TINY, exit_if_unmet, results_path

RESULTS = results_path("extract")
LAYER = "layer4"
BUDGET_S = 0 if TINY else 120  # no new round once a round would end past this (2 rounds at least)
MIN_ROUNDS, MAX_ROUNDS = 2, 12

SETTINGS = [
    # name, builder, image side, images per job (batched methods, loop), batch sizes; short jobs
    # and many rounds give more chances to land in a quiet moment of a shared machine
    ("resnet18 @224", lambda: torchvision.models.resnet18(weights=None), 224, (32, 16), (4, 16, 32)),
    ("tiny-resnet18 @32", lambda: build_tiny_resnet("tiny-resnet18", num_classes=10), 32, (256, 64),
     (16, 64, 256)),
]
if TINY:  # the same models, fewer and (ResNet-18) smaller images, two batch sizes
    SETTINGS = [("resnet18 @64", SETTINGS[0][1], 64, (8, 2), (2, 8)),
                ("tiny-resnet18 @32", SETTINGS[1][1], 32, (8, 2), (2, 8))]


def _inference(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """(a) Plain forward, batch by batch, no autograd bookkeeping."""
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])


def _ours(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """(b) One pass per batch, autograd only from ``layer4`` on."""
    extract.representations(model, images, layer=LAYER, batch_size=batch_size, progress=False)


def _loop(model: nn.Module, images: torch.Tensor, batch_size: int = 1) -> None:
    """(c) Per image: forward with the full graph, ``autograd.grad`` of the argmax logit."""
    store = {}
    layer = dict(model.named_modules())[LAYER]
    handle = layer.register_forward_hook(lambda module, inputs, output: store.update(f=output))
    try:
        for x in images.split(1):
            logits = model(x)
            (grad,) = torch.autograd.grad(logits[0, logits[0].argmax()], store["f"])
            grad.mean(dim=(2, 3))
    finally:
        handle.remove()


METHODS = {"inference": _inference, "ours": _ours, "loop": _loop}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _jobs(batch_sizes) -> list[tuple[str, int]]:
    """(method, batch size) pairs of one round; the loop is per image by definition."""
    return [(m, b) for b in batch_sizes for m in ("inference", "ours")] + [("loop", 1)]


def _round(model, images, n_loop, jobs) -> dict[str, float]:
    """One timing of every job, in img/s; the loop runs on the first ``n_loop`` images only."""
    speeds = {}
    for method, bs in jobs:
        x = images[:n_loop] if method == "loop" else images
        speeds[f"{method}@{bs}"] = len(x) / _timed(METHODS[method], model, x, bs)
    return speeds


def bench_setting(name, build, side, n_images, batch_sizes, deadline) -> dict:
    """Interleaved rounds for one model: best img/s per (method, batch size) and every round."""
    n_batched, n_loop = n_images
    torch.manual_seed(0)
    model = build().eval().to(memory_format=torch.channels_last)
    images = torch.randn(n_batched, 3, side, side).contiguous(memory_format=torch.channels_last)
    jobs = _jobs(batch_sizes)
    for method, bs in jobs:  # warm-up: oneDNN builds its kernels per shape on first use
        METHODS[method](model, images[:max(bs, 4)], bs)
    rounds, last = [], 0.0
    while len(rounds) < MAX_ROUNDS and (len(rounds) < MIN_ROUNDS or time.perf_counter() + last < deadline):
        last = _timed(lambda: rounds.append(_round(model, images, n_loop, jobs)))
    best = {job: max(r[job] for r in rounds) for job in rounds[0]}
    return {"setting": name, "image_side": side, "n_images": n_batched, "n_loop_images": n_loop,
            "memory_format": _memory_format(model), "rounds": rounds, "best": best}


def _memory_format(model: nn.Module) -> str:
    """The format of the model's first convolution weight with a kernel larger than 1 x 1."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.shape[-2:].numel() > 1:
            w = module.weight
            return "contiguous" if w.is_contiguous() else (
                "channels_last" if w.is_contiguous(memory_format=torch.channels_last) else "other")
    return "unknown"


def summarise(result: dict) -> dict:
    """Best batch size per method, the two ratios, and per-round paired ratios at that size."""
    best = result["best"]
    top = {m: max((v, job) for job, v in best.items() if job.startswith(m + "@"))
           for m in METHODS}
    ours_job = top["ours"][1]
    paired_a = [r[ours_job] / r[ours_job.replace("ours", "inference")] for r in result["rounds"]]
    paired_c = [r[ours_job] / r["loop@1"] for r in result["rounds"]]
    return {
        "best_img_per_s": {m: round(v, 1) for m, (v, _) in top.items()},
        "best_batch_size": {m: int(job.split("@")[1]) for m, (_, job) in top.items()},
        "ours_over_inference": round(top["ours"][0] / top["inference"][0], 3),
        "ours_over_loop": round(top["ours"][0] / top["loop"][0], 3),
        "paired_ours_over_inference_median": round(statistics.median(paired_a), 3),
        "paired_ours_over_loop_median": round(statistics.median(paired_c), 3),
    }


def print_table(result: dict, summary: dict) -> None:
    print(f"\n{result['setting']}: {result['n_images']} images, {len(result['rounds'])} rounds, "
          f"{result['memory_format']} weights, img/s (best round)")
    print(f"{'method':<10}" + "".join(f"{'bs ' + job.split('@')[1]:>10}" for job in result["best"]
                                      if job.startswith("ours@")))
    for method in ("inference", "ours"):
        print(f"{method:<10}" + "".join(f"{v:>10.1f}" for job, v in result["best"].items()
                                        if job.startswith(method + "@")))
    print(f"{'loop':<10}{result['best']['loop@1']:>10.1f}  (one image at a time)")
    ok_a = "ok" if summary["ours_over_inference"] >= 0.8 else "BELOW 0.8"
    ok_c = "ok" if summary["ours_over_loop"] >= 2 else "BELOW 2"
    print(f"ours / inference (best vs best) = {summary['ours_over_inference']:.2f}  [{ok_a}]; "
          f"paired per round, median = {summary['paired_ours_over_inference_median']:.2f}")
    print(f"ours / loop      (best vs best) = {summary['ours_over_loop']:.2f}  [{ok_c}]; "
          f"paired per round, median = {summary['paired_ours_over_loop_median']:.2f}")


def main() -> None:
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, 1-min load average {load_before:.1f}")
    results = []
    for i, setting in enumerate(SETTINGS):
        share = (BUDGET_S - (time.perf_counter() - start)) / (len(SETTINGS) - i)
        result = bench_setting(*setting, deadline=time.perf_counter() + share)
        summary = summarise(result)
        print_table(result, summary)
        results.append({**result, "summary": summary})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = (load_before, os.getloadavg()[0])
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "layer": LAYER, "memory_format": sorted({r["memory_format"] for r in results}),
            "load_average_1min": load, "seconds": round(time.perf_counter() - start, 1)}
    RESULTS.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if max(load) > (os.cpu_count() or 1):
        print(f"\nnote: load average {max(load):.1f} > {os.cpu_count()} CPUs: other processes "
              "competed; absolute img/s are low, the interleaved ratios are the robust figures")
    print(f"\nwrote {RESULTS} ({meta['seconds']} s)")
    exit_if_unmet({f"setting {i + 1}: ours / {other} >= {floor:g}": r["summary"][f"ours_over_{other}"] >= floor
                   for i, r in enumerate(results) for other, floor in (("inference", 0.8), ("loop", 2))})


if __name__ == "__main__":
    main()
