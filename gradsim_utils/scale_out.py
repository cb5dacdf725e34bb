"""Run a chapter's heavy step on N processes with torchrun (DESIGN.md section 5c).

One GPU per process on one machine (``--nproc_per_node`` = its GPU count; on a CPU-only machine
the processes share its cores through gloo)::

    torchrun --nproc_per_node=N -m gradsim_utils.scale_out generate --profile paper
    torchrun --nproc_per_node=N -m gradsim_utils.scale_out folder-stats --root IMAGENET/val \\
        --model resnet34 --out ch06-resnet34.pt
    torchrun --nproc_per_node=N -m gradsim_utils.scale_out extract --profile paper --model resnet50 \\
        --layer layer4 --out reps-resnet50.pt

Several machines: the same command on each, with ``--nnodes=M --node_rank=i
--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`` (torchrun's rendezvous); the folders written must
be shared by all. ``python -m gradsim_utils.scale_out ...`` is the one-process run.

``generate`` fills the profile's diffusion cache folder (the one every chapter then reads) with the
images of a one-process run, byte for byte (:func:`data.generate_diffusion`); ``folder-stats``
writes chapter 6's class statistics of an ImageNet-style folder (:func:`folder_statistics.
image_folder_stats`), read back by ``folder_statistics.FolderStats.load``; ``extract`` writes
:func:`extract.representations_sharded` of the profile's images (logits, pooled features,
gradient weights; ``torch.load(..., weights_only=True)``). Only rank 0 writes files and prints.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import data, distributed, extract, models
from .cache import atomic_write
from .folder_statistics import image_folder_stats

__all__ = ["main"]


def _model(args, device):
    return models.load_model(args.model, profile=args.profile, weights=args.weights, checkpoint=args.checkpoint,
                             device=device, seed=args.seed, progress=False)


def _generate(args, device) -> str:
    folder = data.load_profile_data(args.profile, seed=args.seed, device=device, progress=distributed.is_main())
    root = Path(folder.paths[0]).parents[1]
    return f"{len(folder)} images ({len(folder.excluded)} excluded by the safety checker) in {root}"


def _folder_stats(args, device) -> str:
    stats = image_folder_stats(args.root, _model(args, device), where=args.where, batch_size=args.batch_size,
                               resize=args.resize, crop=args.crop, device=device, progress=distributed.is_main())
    if distributed.is_main():
        stats.save(args.out)
    return f"{stats.n_images} images in {len(stats.class_names)} classes, top-1 {stats.accuracy:.4f} -> {args.out}"


def _extract(args, device) -> str:
    images = data.load_profile_data(args.profile, seed=args.seed, device=device).images
    reps = extract.representations_sharded(_model(args, device), images, layer=args.layer,
                                           batch_size=args.batch_size, device=device, keep_features=False,
                                           progress=distributed.is_main())
    if reps is None:
        return ""
    state = {"layer": reps.layer, "model_name": reps.model_name, "logits": reps.logits, "preds": reps.preds,
             "targets": reps.targets, "pooled": reps.pooled, "grad_weights": reps.grad_weights}
    atomic_write(Path(args.out), lambda tmp: torch.save(state, tmp))
    return f"{len(reps)} images, {args.layer} of {args.model} -> {args.out}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m gradsim_utils.scale_out",
                                     description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="paper", help="profile name (default paper)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="auto", help="auto: this process's GPU (LOCAL_RANK), else the CPU")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", required=True, help="a models.load_model name, e.g. resnet34")
    model.add_argument("--weights", default="default", help="torchvision weights name; default: the profile's")
    model.add_argument("--checkpoint", default=None, help="a state-dict file instead of --weights")
    model.add_argument("--batch-size", type=int, default=32)
    model.add_argument("--out", required=True, help="the file rank 0 writes")
    steps.add_parser("generate", parents=[common], help="the profile's diffusion images, into its cache folder")
    stats = steps.add_parser("folder-stats", parents=[common, model], help="chapter 6's class statistics of a folder")
    stats.add_argument("--root", required=True, help="ImageNet-style folder: one sub-folder per class")
    stats.add_argument("--where", nargs="+", default=["conv"], choices=["conv", "bn"])
    stats.add_argument("--resize", type=int, default=256)
    stats.add_argument("--crop", type=int, default=224)
    ext = steps.add_parser("extract", parents=[common, model], help="logits and gradient weights of the profile's images")
    ext.add_argument("--layer", default="layer4")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank, world = distributed.init_from_env()
    start = time.perf_counter()
    try:
        run = {"generate": _generate, "folder-stats": _folder_stats, "extract": _extract}[args.step]
        message = run(args, args.device)
        distributed.barrier()
        if rank == 0:
            print(f"{args.step} on {world} process(es) in {time.perf_counter() - start:.1f} s: {message}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
