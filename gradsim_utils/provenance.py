"""Where the book's numbers came from: the code's commit, package versions and the machine.

Float results of training depend on the machine as well as on the code: torch's CPU kernels are
compiled for several vector ISAs (``torch.backends.cpu.get_cpu_capability()``), oneDNN picks its
convolution kernels (and their block sizes) for the CPU at run time, and the number of threads
changes the order of reductions. So this module records what can change a float result:

- :func:`machine_description` -- everything, as a flat ``{label: value}`` dict, for the
  reproducibility page;
- :func:`training_machine` -- a few short strings and ints to store inside every cached model's
  metrics (they survive ``torch.save`` / ``torch.load(weights_only=True)``), and
  :func:`describe_machine` -- that dict as one line, to show next to a model table;
- :func:`cpu_description`, :func:`torch_build` -- the parts, parsed from ``/proc/cpuinfo`` and
  ``torch.__config__``;
- :func:`isa_sensitivity` -- a measurement: the same training steps rerun with the vector ISA one
  step lower, to show how far results move between CPUs;
- :class:`StageTimer` -- wall time of a chapter's named stages.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

from .devices import get_device

__all__ = ["BOOK_PACKAGES", "git_commit", "package_versions", "cpu_description", "torch_build",
           "machine_description", "training_machine", "describe_machine", "trained_on", "isa_sensitivity",
           "StageTimer"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CPUINFO = Path("/proc/cpuinfo")

BOOK_PACKAGES = ("gradsim_utils", "torch", "torchvision", "numpy", "scipy", "numba", "scikit-learn", "scikit-image",
                 "pandas", "matplotlib", "seaborn", "diffusers", "transformers", "timm", "grad-cam", "captum",
                 "papermill", "jupytext", "jupyter-book", "myst-nb", "sphinx")


def git_commit(root: Path = REPO_ROOT) -> dict:
    """``{"sha", "short", "dirty"}`` of the checkout at ``root``; "unknown" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"sha": "unknown", "short": "unknown", "dirty": False}
    return {"sha": sha, "short": sha[:10], "dirty": dirty}


def package_versions(packages=BOOK_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution ("not installed" when absent)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _first_cpuinfo_block(path: Path) -> dict[str, str]:
    """``key: value`` pairs of the first processor in a ``/proc/cpuinfo``-style file ({} if unreadable)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_model_fallback() -> str:
    if platform.system() == "Darwin":
        try:
            brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   check=True).stdout.strip()
            if brand:
                return brand
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_description(cpuinfo: str | Path = CPUINFO) -> dict:
    """The CPU: ``{"model": str, "vendor": str, "avx2": bool | None, "avx512f": bool | None}``.

    Read from the first processor of ``cpuinfo`` (Linux's ``/proc/cpuinfo``: "model name",
    "vendor_id", "flags"); where that file or a field is missing, the model falls back to
    ``platform.processor()`` (``sysctl`` on macOS), the vendor to "unknown" and the two ISA flags
    to ``None`` (not known, as opposed to ``False``, known absent).
    """
    fields = _first_cpuinfo_block(Path(cpuinfo))
    flags = fields.get("flags")
    flag_set = set(flags.split()) if flags is not None else None
    return {
        "model": fields.get("model name") or _cpu_model_fallback(),
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or "unknown",
        "avx2": None if flag_set is None else "avx2" in flag_set,
        "avx512f": None if flag_set is None else "avx512f" in flag_set,
    }


def _search(pattern: str, text: str, default: str) -> str:
    match = re.search(pattern, text, flags=re.MULTILINE)
    return match.group(1).strip() if match else default


def torch_build(config: str | None = None, parallel: str | None = None) -> dict[str, str]:
    """torch's version and build configuration, as strings.

    Keys: "torch", "CUDA build", "CPU capability" (the vector ISA torch's kernels dispatch to on
    this machine), "oneDNN" (version and git hash, or "not built"), "MKL", "BLAS", "LAPACK",
    "OpenMP", "parallel backend". ``config`` and ``parallel`` default to
    ``torch.__config__.show()`` and ``torch.__config__.parallel_info()``; pass other text to parse it.
    """
    config = torch.__config__.show() if config is None else config
    parallel = torch.__config__.parallel_info() if parallel is None else parallel
    onednn = re.search(r"(?:MKL-DNN|oneDNN)\s+v(\S+)(?:\s+\(Git Hash\s+([0-9a-f]+)\))?", config)
    if onednn:
        onednn_text = f"{onednn.group(1)} ({onednn.group(2)[:8]})" if onednn.group(2) else onednn.group(1)
    else:
        onednn_text = "not built"
    openmp = re.search(r"^\s*-?\s*OpenMP\s+(\d+)(?:\s+\(a\.k\.a\.\s+OpenMP\s+([\d.]+)\))?", config, flags=re.MULTILINE)
    return {
        "torch": str(torch.__version__),
        "CUDA build": torch.version.cuda or "none",
        "CPU capability": torch.backends.cpu.get_cpu_capability(),
        "oneDNN": onednn_text,
        "MKL": _search(r"Math Kernel Library Version\s+([\w.]+)", config, "not built"),
        "BLAS": _search(r"(?<![A-Z_])BLAS_INFO=([^,\s]*)", config, "unknown"),
        "LAPACK": _search(r"(?<![A-Z_])LAPACK_INFO=([^,\s]*)", config, "unknown"),
        "OpenMP": (openmp.group(2) or openmp.group(1)) if openmp else "not used",
        "parallel backend": _search(r"ATen parallel backend:\s*(.+)$", parallel, "unknown"),
    }


def _onednn_isa_cap() -> str | None:
    """oneDNN's ISA cap from the environment (``ONEDNN_MAX_CPU_ISA``, or its old name ``DNNL_MAX_CPU_ISA``)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")


def _device_name(device: str | torch.device) -> str:
    dev = get_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type


def _yes_no(flag: bool | None) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


def machine_description(device: str | torch.device = "auto") -> dict:
    """Everything about this machine that can change a float result, as ``{label: value}`` for a table.

    Python and OS; the CPU (model, vendor, AVX2 / AVX-512F flags, the vector ISA torch dispatches
    to, any ``ONEDNN_MAX_CPU_ISA`` cap); torch's build (version, oneDNN, MKL, BLAS, LAPACK, OpenMP,
    parallel backend, CUDA); threads (torch's intra- and inter-op counts and the OMP / MKL
    environment variables); the device ``device`` resolves to (GPU name or "cpu"), the GPU and memory.
    Values are str, int or float.
    """
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = float("nan")
    cpu = cpu_description()
    build = torch_build()
    return {
        "Python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "CPU model": cpu["model"],
        "CPU vendor": cpu["vendor"],
        "AVX2": _yes_no(cpu["avx2"]),
        "AVX-512F": _yes_no(cpu["avx512f"]),
        "torch CPU capability": build["CPU capability"],
        "ONEDNN_MAX_CPU_ISA": _onednn_isa_cap() or "not set",
        "logical CPUs": os.cpu_count(),
        "torch": build["torch"],
        "oneDNN": build["oneDNN"],
        "MKL": build["MKL"],
        "BLAS": build["BLAS"],
        "LAPACK": build["LAPACK"],
        "OpenMP": build["OpenMP"],
        "parallel backend": build["parallel backend"],
        "CUDA build": build["CUDA build"],
        "intra-op threads": torch.get_num_threads(),
        "inter-op threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "not set"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "not set"),
        "device": _device_name(device),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "memory (GiB)": round(memory_gib, 1),
    }


def training_machine(device: str | torch.device = "auto") -> dict[str, str | int]:
    """The machine a model is trained on, to store in the model's cached metrics.

    ``{"cpu": str, "isa": str, "onednn": str, "blas": str, "torch": str, "threads": int, "device": str}``:
    the CPU model, the vector ISA torch dispatches to (with `` (ONEDNN_MAX_CPU_ISA=...)`` appended
    when oneDNN is capped), oneDNN's version, torch's BLAS, torch's version, torch's intra-op
    threads and the device (GPU name or "cpu"). Only str and int values, so the dict loads with
    ``torch.load(weights_only=True)`` and writes to JSON. Call it inside the training, once its
    thread setting is in effect, with the training's device. :func:`describe_machine` formats it.
    """
    build = torch_build()
    cap = _onednn_isa_cap()
    isa = build["CPU capability"] + (f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else "")
    return {
        "cpu": cpu_description()["model"],
        "isa": isa,
        "onednn": build["oneDNN"],
        "blas": build["BLAS"],
        "torch": build["torch"],
        "threads": torch.get_num_threads(),
        "device": _device_name(device),
    }


def describe_machine(machine: Mapping | None) -> str:
    """One line for a :func:`training_machine` dict, e.g. "Intel Xeon Processor · AVX512 · torch 2.14.1 ·
    2 threads · cpu"; "machine not recorded" for ``None`` or an empty dict (models cached before it was)."""
    if not machine:
        return "machine not recorded"
    parts = []
    if machine.get("cpu"):
        parts.append(re.sub(r"\s+", " ", re.sub(r"\((?:R|TM|tm|r)\)", "", str(machine["cpu"]))).strip())
    if machine.get("isa"):
        parts.append(str(machine["isa"]))
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    if machine.get("threads") is not None:
        threads = int(machine["threads"])
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if machine.get("device"):
        parts.append(str(machine["device"]))
    return " · ".join(parts) if parts else "machine not recorded"


def trained_on(machines) -> str:
    """The distinct :func:`describe_machine` lines of ``machines`` (one per model of a table), "; "-joined."""
    return "; ".join(sorted({describe_machine(m) for m in machines}))


# One child process of isa_sensitivity: a small convolutional network, SGD with momentum, one thread,
# contiguous tensors (DESIGN 5b: no channels_last backward through a convolution on CPU). The first child
# writes the start (weights and data) to ``init``; every child starts from those bits, so the only
# difference between children is the environment they run in (the vector ISA).
_PROBE = r"""
import os, sys, torch
from torch import nn
torch.set_num_threads(1)
init_path, out_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
checkpoints = [int(s) for s in sys.argv[4].split(",")]
def build():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
if not os.path.exists(init_path):
    torch.manual_seed(seed)
    torch.save({"state": build().state_dict(), "x": torch.randn(64, 3, 32, 32),
                "y": torch.randint(0, 10, (64,))}, init_path)
init = torch.load(init_path, weights_only=True)
net = build()
net.load_state_dict(init["state"])
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
weights, losses = [], []
for step in range(1, max(checkpoints) + 1):
    opt.zero_grad()
    nn.functional.cross_entropy(net(init["x"]), init["y"]).backward()
    opt.step()
    if step in checkpoints:
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(net(init["x"]), init["y"]).item())
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
torch.save({"capability": torch.backends.cpu.get_cpu_capability(), "losses": losses,
            "weights": torch.stack(weights)}, out_path)
"""


def _lower_isa(capability: str, machine: str) -> tuple[str, str | None] | None:
    """``(ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)`` one step below ``capability`` (None: nothing lower)."""
    cap = capability.upper()
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    if cap.startswith("AVX512"):
        return "avx2", "AVX2"
    if cap.startswith("AVX2"):
        return "default", "SSE41"
    if cap != "DEFAULT" and not x86:
        return "default", None
    return None


def isa_sensitivity(steps=(1, 3, 10, 30, 60), seed: int = 0, timeout: float = 300) -> dict:
    """How far the same training moves when the vector ISA is one step lower, measured on this machine.

    Runs a small convolutional network's SGD training (one thread, contiguous tensors, fixed start)
    in three fresh processes: as this process's environment has it, the same again, and with
    ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` one step lower (AVX-512 -> AVX2,
    AVX2 -> default / SSE4.1), which is what another CPU would run. Returns ``{"steps": [int],
    "isa": str, "lower_isa": str | None, "onednn_lower": str | None, "rerun_identical": bool,
    "relative_difference": [float], "fraction_differing": [float], "loss": [float],
    "loss_lower": [float]}``: per checkpoint, ``||w_lower - w|| / ||w||`` over all parameters, the
    fraction of parameters whose bits differ, and the training loss of both runs. When no lower ISA
    is known ("lower_isa" None) only the rerun is made and the lower-ISA lists are empty.
    """
    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps!r}")
    capability = torch.backends.cpu.get_cpu_capability()
    lower = _lower_isa(capability, platform.machine())
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = {"reference": base_env, "rerun": base_env}
    if lower is not None:
        aten, onednn = lower
        lower_env = {**base_env, "ATEN_CPU_CAPABILITY": aten}
        if onednn is not None:
            lower_env["ONEDNN_MAX_CPU_ISA"] = onednn
        runs["lower"] = lower_env
    results = {}
    with tempfile.TemporaryDirectory(prefix="gradsim_isa_") as tmp:
        init = Path(tmp) / "init.pt"
        for name, env in runs.items():
            out = Path(tmp) / f"{name}.pt"
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(init), str(out), str(seed),
                                   ",".join(map(str, steps))], env=env, capture_output=True, text=True,
                                  timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"isa_sensitivity: the {name} run failed (exit {proc.returncode}):\n"
                                   f"{proc.stderr[-2000:]}")
            results[name] = torch.load(out, weights_only=True)
    ref = results["reference"]
    out = {
        "steps": steps, "isa": ref["capability"], "lower_isa": None, "onednn_lower": None,
        "rerun_identical": bool(torch.equal(ref["weights"], results["rerun"]["weights"])
                                and ref["losses"] == results["rerun"]["losses"]),
        "relative_difference": [], "fraction_differing": [], "loss": [float(v) for v in ref["losses"]],
        "loss_lower": [],
    }
    if "lower" in results:
        low = results["lower"]
        diff = (low["weights"].double() - ref["weights"].double())
        out.update(
            lower_isa=low["capability"], onednn_lower=lower[1],
            relative_difference=(diff.norm(dim=1) / ref["weights"].double().norm(dim=1)).tolist(),
            fraction_differing=(low["weights"] != ref["weights"]).double().mean(dim=1).tolist(),
            loss_lower=[float(v) for v in low["losses"]],
        )
    return out


class StageTimer:
    """Wall time of named stages: ``with timer("stage"): ...``; ``timer.seconds`` keeps them."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
            print(f"[time] {stage}: {self.seconds[stage]:.1f} s")
