"""Memory of the paper profile's heavy steps (issue 18, point 3), from ``gradsim_utils.memory``.

Three parts:
  (a) extrapolation: per-image saved bytes of ResNet-50's input-gradient pass measured at 224 px,
      against the same extrapolated from 64 and 96 px passes (``pass_memory(measure_at=...)``);
  (b) the model against a real allocation: peak resident memory of this process (sampled from
      /proc/self/statm every 2 ms) above its level before ``extract.loss_input_gradients`` on a
      batch at 224 px, against ``memory.gpu_bytes`` for that batch (CPU memory as a stand-in for
      the GPU's; the CPU allocator returns and reuses memory differently);
  (c) the estimate per chapter at the paper profile's sizes (``memory.paper_steps``).
Requirements: (a) = 1 within 1 %; (b) between 0.5 and 1.5; (c) every step under 24 GiB of GPU memory
and 32 GiB of host memory.

Run: ``python benchmarks/bench_memory.py`` (about a minute on 2 cores); writes
``benchmarks/results/memory.json``. Tiny setting and results folder: ``_settings.py``.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import torch
import torchvision

from gradsim_utils import book, extract, memory, profiles

from _settings import TINY, results_path

RESULTS = results_path("memory")
MODEL, SIDE, BATCH = ("resnet18", 96, 4) if TINY else ("resnet50", 224, 8)
GPU_LIMIT_GIB, HOST_LIMIT_GIB = 24, 32
PAGE = 4096


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def peak_rss_above_start(run) -> int:
    """Peak resident bytes above the level before ``run()``, sampled every 2 ms while it runs."""
    start, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss()) - start


def main() -> None:
    net = getattr(torchvision.models, MODEL)().eval()
    measured = memory.pass_memory(net, SIDE, "input")
    extrapolated = memory.pass_memory(net, SIDE, "input", measure_at=(32, 64) if TINY else (64, 96))
    extrapolation_ratio = extrapolated.saved / measured.saved
    print(f"{MODEL} @{SIDE} input gradients, saved per image: {measured.saved / 2**20:.1f} MiB")
    print(f"extrapolated / measured saved bytes = {extrapolation_ratio:.4f}")

    images = torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))   # prepared input
    labels = torch.zeros(BATCH, dtype=torch.long)
    extract.loss_input_gradients(net, images[:1], labels[:1], batch_size=1, device="cpu", progress=False)  # warm-up
    rss = peak_rss_above_start(lambda: extract.loss_input_gradients(net, images, labels, batch_size=BATCH,
                                                                     device="cpu", progress=False))
    activations = memory.gpu_bytes(measured, BATCH) - measured.state   # the parameters are already resident
    rss_ratio = rss / activations
    print(f"batch {BATCH}: peak RSS rise {rss / 2**20:.0f} MiB, estimate {activations / 2**20:.0f} MiB")
    print(f"measured RSS rise / estimate = {rss_ratio:.2f}")

    paper = profiles.get_profile("paper")
    batches = {source.stem[:2]: book.chapter_parameters(source).get("batch_size") for source in book.chapter_sources()}
    steps = memory.paper_steps(paper, batches)
    if TINY:   # one model and one step per chapter: every code path, seconds
        steps = [s for s in steps if s.model in ("resnet18", "resnet34")][:4]
    table = memory.estimate(steps)
    per_chapter = table.loc[table.groupby("chapter")["gpu_gib"].idxmax()]
    print(per_chapter.round(2).to_string(index=False))
    gpu_ratio, host_ratio = table["gpu_gib"].max() / GPU_LIMIT_GIB, table["host_gib"].max() / HOST_LIMIT_GIB
    print(f"largest GPU step / {GPU_LIMIT_GIB} GiB = {gpu_ratio:.2f}")
    print(f"largest host step / {HOST_LIMIT_GIB} GiB = {host_ratio:.2f}")

    failed = [name for name, ok in (("extrapolation within 1 %", abs(extrapolation_ratio - 1) <= 0.01),
                                    ("RSS rise within 0.5-1.5 of the estimate", 0.5 <= rss_ratio <= 1.5),
                                    (f"every step under {GPU_LIMIT_GIB} GiB GPU", gpu_ratio < 1),
                                    (f"every step under {HOST_LIMIT_GIB} GiB host", host_ratio < 1)) if not ok]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "model": MODEL, "side": SIDE, "batch": BATCH, "extrapolated_over_measured": extrapolation_ratio,
        "rss_over_estimate": rss_ratio, "gpu_max_over_limit": gpu_ratio, "host_max_over_limit": host_ratio,
        "per_chapter": per_chapter.to_dict(orient="records"), "failed": failed}, indent=1))
    if failed:
        raise SystemExit("requirements failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
