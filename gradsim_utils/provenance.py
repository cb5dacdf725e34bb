"""Where the book's numbers came from: the code's commit, package versions and the machine."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["BOOK_PACKAGES", "git_commit", "package_versions", "machine_description"]

REPO_ROOT = Path(__file__).resolve().parent.parent

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


def machine_description() -> dict:
    """Python, OS, CPU count, torch threads, GPU (if any) and memory of this machine."""
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = float("nan")
    return {
        "Python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "logical CPUs": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "memory (GiB)": round(memory_gib, 1),
    }
