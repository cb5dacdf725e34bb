"""gradsim_utils: the small package every chapter of the gradsim book imports.

Modules, one concern each: ``profiles`` (scale settings), ``devices`` (device and memory
format), ``cache`` (content-addressed disk cache), ``data`` (controlled benchmark, diffusion images, image folders), ``models`` and
``training`` (torchvision, tiny and EfficientNet-Lite0 models), ``extract`` (one batched pass:
logits, features, gradient weights), ``similarity`` (cosine tables), ``clustering`` (K-means,
GMM, scores), ``saliency`` (Grad-CAM maps and map metrics), ``localisation`` (boxes, IoU,
pointing game), ``label_similarity`` (seed 002), ``rsvc`` (seed 003), ``metric_learning`` and
``sfam`` (seed 004), ``alignment`` (seed 001's gradient-alignment loss, HVP, mutual information),
``stats`` (bootstrap intervals), ``plotting``, ``report`` (glued numbers, recorded claims) and
``provenance`` (commit, versions, machine), ``book`` (papermill + jupyter-book runner).
"""
from . import (alignment, cache, clustering, data, devices, extract, label_similarity, localisation, metric_learning,
               models, plotting, profiles, provenance, report, rsvc, saliency, sfam, similarity, stats, training)

__all__ = ["alignment", "cache", "clustering", "data", "devices", "extract", "label_similarity", "localisation",
           "metric_learning", "models", "plotting", "profiles", "provenance", "report", "rsvc", "saliency", "sfam",
           "similarity", "stats", "training"]
__version__ = "0.1.0"
