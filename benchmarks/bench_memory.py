"""Memory of the paper profile's heavy steps (issue 18, point 3), from ``gradsim_utils.memory``.

Three parts:
  (a) extrapolation: per-image saved bytes of ResNet-50's input-gradient pass measured at 224 px,
      against the same extrapolated from 64 and 96 px passes (``pass_memory(measure_at=...)``);
  (b) the model against a real allocation: peak resident memory of this process (sampled from
      /proc/self/statm every 2 ms) above its level before ``extract.loss_input_gradients`` on a
      batch at 224 px, against ``memory.gpu_bytes`` for that batch (CPU memory as a stand-in for
      the GPU's; the CPU allocator returns and reuses memory differently);
  (c) the estimate per chapter at the paper profile's sizes (``memory.paper_steps``), with each
      chapter's work (``cost.estimate``: TFLOP counted per image x images passed) and its GPU time at
      the assumed ``cost.GPU_FP32_TFLOPS`` (chapter 1: ``cost.diffusion`` at ``GPU_FP16_TFLOPS``);
  (d) this machine's CPU rate: counted FLOPs of a forward and a training pass over the measured
      seconds (``cost.measured_tflops``), beside the assumed GPU rate;
  (e) ``cost.LiveBytes`` (the activation peak chapter 1's estimate uses) against a real allocation:
      its peak over a no-grad forward of the batch, against the peak rise of the bytes glibc's malloc
      has handed out (``mallinfo2``, sampled) during the same forward.
Requirements: (a) = 1 within 1 %; (b) and (e) between 0.5 and 1.5 ((e) outside the tiny setting); (c) every step under 24 GiB of GPU
memory and 32 GiB of host memory; outside the tiny setting, the SD-1.5 configs give the published
parameter counts within 0.1 % (UNet 859.52 M, VAE 83.65 M, text encoder 123.06 M).

Run: ``python benchmarks/bench_memory.py`` (about a minute on 2 cores); writes
``benchmarks/results/memory.json``. Tiny setting and results folder: ``_settings.py``.
"""
from __future__ import annotations

import inspect
import ctypes
import json
import threading
import time
from pathlib import Path

import torch
import torchvision

from gradsim_utils import book, cost, data, extract, memory, profiles

from _settings import TINY, results_path

RESULTS = results_path("memory")
MODEL, SIDE, BATCH = ("resnet18", 96, 4) if TINY else ("resnet50", 224, 8)
GPU_LIMIT_GIB, HOST_LIMIT_GIB = 24, 32
PAGE = 4096
SD15_PARAMETERS_M = {"text encoder": 123.06, "UNet": 859.52, "VAE (decode)": 83.65}   # published model cards


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def _allocated() -> int:
    """Bytes glibc's malloc has handed out and not had back (heap in use + mmapped chunks): unlike
    the RSS, it falls when memory is freed, so reused pages do not hide an allocation."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


def peak_above_start(run, read=_rss) -> int:
    """Peak of ``read()`` (default: resident bytes) above its level before ``run()``, sampled every
    2 ms while it runs."""
    start, peak, done = read(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], read())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return max(peak[0], read()) - start


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
    rss = peak_above_start(lambda: extract.loss_input_gradients(net, images, labels, batch_size=BATCH,
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
    built = memory.built_models(steps)
    table = memory.estimate(steps, nets=built)
    work = cost.estimate(steps, nets=built)
    per_chapter = table.loc[table.groupby("chapter")["gpu_gib"].idxmax()].set_index("chapter")
    per_chapter["tflop"] = work.groupby("chapter")["tflop"].sum()
    per_chapter["gpu_seconds"] = work.groupby("chapter")["gpu_seconds"].sum()
    configs_ok = True
    if not TINY:   # chapter 1: Stable Diffusion v1.5 on the meta device (seconds, but diffusers' import)
        generation = inspect.signature(data.generate_diffusion).parameters
        sd = cost.diffusion(paper.diffusion_steps, generation["image_size"].default, generation["batch_size"].default,
                            generation["guidance_scale"].default > 1, paper.n_analysis_per_class * 10)
        print(sd.round(3).to_string(index=False))
        configs_ok = all(abs(row.parameters_m / SD15_PARAMETERS_M[row.network] - 1) <= 1e-3 for row in sd.itertuples())
        largest = sd.loc[sd["gpu_gib"].idxmax()]
        per_chapter.loc["01"] = {"step": f"Stable Diffusion v1.5 (float16): {largest['network']}", "model": "SD 1.5",
                                 "batch": int(largest["batch"]), "gpu_gib": largest["gpu_gib"], "host_gib": float("nan"),
                                 "tflop": sd["tflop"].sum(), "gpu_seconds": sd["gpu_seconds"].sum()}
        per_chapter = per_chapter.sort_index()
    per_chapter = per_chapter.reset_index()
    print(per_chapter.round(2).to_string(index=False))
    print(f"GPU seconds at the assumed {cost.GPU_FP32_TFLOPS:g} TFLOP/s (float32) and "
          f"{cost.GPU_FP16_TFLOPS:g} TFLOP/s (chapter 1, float16): {per_chapter['gpu_seconds'].sum():.0f} s in all")

    cpu_rates = {mode: cost.measured_tflops(net, SIDE, mode, batch_size=BATCH) for mode in ("forward", "train")}
    print(f"CPU rate here, {MODEL} @{SIDE} batch {BATCH}: " +
          ", ".join(f"{mode} {rate:.3f} TFLOP/s" for mode, rate in cpu_rates.items()) +
          f" (assumed GPU rate: {cost.GPU_FP32_TFLOPS:g} TFLOP/s, "
          f"{cost.GPU_FP32_TFLOPS / cpu_rates['forward']:.0f}x the forward rate)")

    net.eval()
    with torch.no_grad(), cost.LiveBytes() as live:
        net(images)
    with torch.no_grad():
        forward_malloc = peak_above_start(lambda: net(images), _allocated)
    live_ratio = forward_malloc / live.peak
    print(f"no-grad forward of batch {BATCH}: peak rise of malloc'd bytes {forward_malloc / 2**20:.0f} MiB, "
          f"LiveBytes peak {live.peak / 2**20:.0f} MiB, ratio {live_ratio:.2f}")
    gpu_ratio, host_ratio = per_chapter["gpu_gib"].max() / GPU_LIMIT_GIB, table["host_gib"].max() / HOST_LIMIT_GIB
    print(f"largest GPU step / {GPU_LIMIT_GIB} GiB = {gpu_ratio:.2f}")
    print(f"largest host step / {HOST_LIMIT_GIB} GiB = {host_ratio:.2f}")

    failed = [name for name, ok in (("extrapolation within 1 %", abs(extrapolation_ratio - 1) <= 0.01),
                                    ("RSS rise within 0.5-1.5 of the estimate", 0.5 <= rss_ratio <= 1.5),
                                    # tiny sizes: oneDNN's workspace outweighs the activations
                                    ("forward malloc rise within 0.5-1.5 of LiveBytes", TINY or 0.5 <= live_ratio <= 1.5),
                                    ("SD-1.5 parameter counts as published", configs_ok),
                                    (f"every step under {GPU_LIMIT_GIB} GiB GPU", gpu_ratio < 1),
                                    (f"every step under {HOST_LIMIT_GIB} GiB host", host_ratio < 1)) if not ok]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "model": MODEL, "side": SIDE, "batch": BATCH, "extrapolated_over_measured": extrapolation_ratio,
        "rss_over_estimate": rss_ratio, "forward_malloc_over_live_bytes": live_ratio,
        "cpu_tflops": cpu_rates, "assumed_gpu_tflops": {"fp32": cost.GPU_FP32_TFLOPS, "fp16": cost.GPU_FP16_TFLOPS},
        "gpu_max_over_limit": gpu_ratio, "host_max_over_limit": host_ratio,
        "per_chapter": per_chapter.to_dict(orient="records"), "failed": failed}, indent=1))
    if failed:
        raise SystemExit("requirements failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
