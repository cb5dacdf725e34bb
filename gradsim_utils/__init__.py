"""gradsim_utils: the small package every chapter of the gradsim book imports.

Modules, one concern each, in the layers of DESIGN.md section 11 (each imports only its own layer or
lower ones, without a circle; ``tests/test_layers.py`` checks it):

1. ``profiles`` (scale settings, each chapter's sizes), ``cache`` (content-addressed disk cache: the
   one hasher and atomic writer), ``stats`` (bootstrap draws, percentile intervals, paired
   differences), ``devices`` (device and memory format), ``distributed`` (torchrun: rank, shard, merge), ``provenance`` (commit, versions, machine,
   stage timings), and the leaves ``plotting``, ``report`` (glued numbers, claims recorded per
   regime, the summary's verdict matrix), ``book`` (papermill + jupyter-book runner),
   ``notebook_download`` (the reader's copy of an executed chapter) and ``site_links`` (the Sphinx
   extension behind the launch and download buttons; these two are not imported here, as they serve
   the book build, not the chapters);
2. ``data`` (controlled benchmark with its class names and normalisation, diffusion images, image
   folders), ``nets`` (what a model is: ResNet layout, tiny ResNets, ``ModelInfo``, input
   preparation);
3. ``training`` (the one optimisation loop and cached-model path; tiny ResNets on the benchmark), ``models`` (torchvision, tiny and EfficientNet-Lite0/1/2
   models by name; class names to model outputs), ``extract`` (one batched pass: logits, features,
   gradient weights);
4. the methods: ``similarity`` (cosine tables), ``clustering`` (K-means, GMM, scores), ``saliency``
   (Grad-CAM maps and map metrics), ``localisation`` (boxes, IoU, pointing game),
   ``gap_statistics`` (GAP of every conv, by hooks), ``class_statistics`` (streaming class sums,
   Welch t), ``label_similarity`` (class-similarity agreement), ``folder_statistics`` (an image
   folder streamed class by class; these four: seed 002), ``rsvc`` (seed 003), ``metric_learning``
   and ``sfam`` (seed 004), ``alignment`` (seed 001's gradient-alignment loss, HVP, mutual information),
   ``memory`` (bytes per image of a model pass; the paper profile's memory estimate), ``cost`` (FLOPs
   per image and GPU time at an assumed rate; chapter 1's Stable Diffusion work and memory); ``scale_out`` (the
   torchrun command for the heavy steps; not imported here).
"""
from . import (alignment, cache, class_statistics, clustering, cost, data, devices, distributed, extract, folder_statistics, gap_statistics,
               label_similarity, localisation, memory, metric_learning, models, nets, plotting, profiles, provenance, report, rsvc,
               saliency, sfam, similarity, stats, training)

__all__ = ["alignment", "cache", "class_statistics", "clustering", "cost", "data", "devices", "distributed", "extract", "folder_statistics",
           "gap_statistics", "label_similarity", "localisation", "memory", "metric_learning", "models", "nets", "plotting",
           "profiles", "provenance", "report", "rsvc", "saliency", "sfam", "similarity", "stats", "training"]
__version__ = "0.1.0"
