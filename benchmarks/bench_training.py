"""Training speed per model family: the contiguous memory format the package trains in now
(``devices.memory_format``, DESIGN.md 5b) against channels-last, which it used before.

Families at their quick shapes: the tiny ResNets of chapters 2-6 (and RSVC's marker models, the
same net; 32 px, base width 16, batch 64) and SFAM's metric models (tiny-resnet18 trunk, base
width 8, 64 px, one 10-way 4-shot 4-query episode of 80 images). Each (family, format) runs in its
own child process, so a crash of oneDNN's channels-last backward (it segfaults the metric model
on AVX-512 CPUs) is reported as such instead of ending the benchmark; rounds are interleaved
(contiguous, channels-last, contiguous, ...) so load from other processes hits both alike, and the
best round counts. A step is the package's: AdamW, forward, loss, backward, optimiser step.

Run: ``python benchmarks/bench_training.py`` (a few minutes on 2 cores); writes
``benchmarks/results/training.json``.
Tiny setting and results folder: ``_settings.py``."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from gradsim_utils import provenance

from _settings import TINY, results_path

RESULTS = results_path("training")
ROUNDS, STEPS = (1, 2) if TINY else (3, 8)  # tiny: one round (every code path; 8 -> 4 child processes)
# family -> (model name, base width, image size, batch): the quick shapes
FAMILIES = ({"tiny-resnet18": ("tiny-resnet18", 16, 16, 16), "metric (tiny-resnet18 trunk)": ("tiny-resnet18", 8, 32, 16)}
            if TINY else
            {"tiny-resnet18": ("tiny-resnet18", 16, 32, 64), "tiny-resnet50": ("tiny-resnet50", 16, 32, 64),
             "tiny-resnet152": ("tiny-resnet152", 16, 32, 64),
             "metric (tiny-resnet18 trunk)": ("tiny-resnet18", 8, 64, 80)})
FORMATS = ("contiguous_format", "channels_last")

# One child: build the net, take one warm-up step, then time STEPS steps; print images per second.
_CHILD = r"""
import sys, time, torch
import torch.nn.functional as F
from gradsim_utils import nets, training
name, width, size, batch, fmt, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
fmt = getattr(torch, fmt)
with training.cpu_threads():
    torch.manual_seed(0)
    net = nets.build_tiny_resnet(name, 10, width).to(memory_format=fmt).train()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.arange(batch) % 10
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(steps * batch / (time.perf_counter() - start))
"""


def _images_per_second(shape: tuple, fmt: str) -> float | str:
    """Training images per second in a child process, or the signal that killed it."""
    run = subprocess.run([sys.executable, "-c", _CHILD, *map(str, shape), fmt, str(STEPS)],
                         capture_output=True, text=True, timeout=900)
    if run.returncode < 0:
        return f"crashed ({signal.Signals(-run.returncode).name})"
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return float(run.stdout.split()[-1])


def main() -> dict:
    best: dict[str, dict[str, float | str]] = {family: {} for family in FAMILIES}
    for _ in range(ROUNDS):
        for family, shape in FAMILIES.items():
            for fmt in FORMATS:
                speed = _images_per_second(shape, fmt)
                kept = best[family].get(fmt)
                if isinstance(speed, str) or kept is None or (not isinstance(kept, str) and speed > kept):
                    best[family][fmt] = speed
    out = {"machine": provenance.training_machine("cpu"), "rounds": ROUNDS, "steps": STEPS, "families": {}}
    print(provenance.describe_machine(out["machine"]))
    for family, speeds in best.items():
        contiguous, channels_last = speeds["contiguous_format"], speeds["channels_last"]
        row = {"shape": dict(zip(("model", "base_width", "image_size", "batch"), FAMILIES[family])),
               "contiguous_img_per_s": contiguous, "channels_last_img_per_s": channels_last}
        if isinstance(channels_last, str):
            print(f"{family:30s}: contiguous {contiguous:7.1f} img/s; channels-last {channels_last}; "
                  f"contiguous / channels-last = inf (channels-last does not run here)")
        else:
            row["contiguous_over_channels_last"] = contiguous / channels_last
            print(f"{family:30s}: contiguous {contiguous:7.1f} img/s, channels-last {channels_last:7.1f} img/s, "
                  f"contiguous / channels-last = {contiguous / channels_last:.2f}")
        out["families"][family] = row
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"written to {RESULTS}")
    return out


if __name__ == "__main__":
    main()
