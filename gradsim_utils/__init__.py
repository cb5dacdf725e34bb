"""gradsim_utils: the small package every chapter of the gradsim book imports.

Modules, one concern each: ``profiles`` (scale settings, device), ``cache`` (content-addressed
disk cache), ``data`` (controlled benchmark, diffusion images, image folders), ``models`` and
``training`` (torchvision, tiny and EfficientNet-Lite0 models), ``extract`` (one batched pass:
logits, features, gradient weights), ``similarity`` (cosine tables), ``plotting`` and ``report``
(figures and glued numbers), ``book`` (papermill + jupyter-book runner).
"""
from . import cache, data, extract, localisation, models, plotting, profiles, provenance, report, similarity, stats, training

__all__ = ["cache", "data", "extract", "localisation", "models", "plotting", "profiles", "provenance", "report",
           "similarity", "stats", "training"]
__version__ = "0.1.0"
