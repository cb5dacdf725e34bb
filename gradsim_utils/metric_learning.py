"""Metric-learning models for the SFAM chapter (seed 004): trained on base classes, tested on novel.

Two heads on the same kind of backbone (a ResNet without its classifier; the embedding is the
global average pool ``V = p(A)`` of the last stage's feature map ``A``):

- ``euclidean``: prototypical network (Snell et al. 2017), score ``-||V^Q - V^S||^2`` with the
  class prototype ``V^S`` the mean of the support embeddings (seed 004 Eq. 1);
- ``cosine``: score ``tau * cos(V^Q, V^S)`` with a learnt temperature ``tau`` (used in training
  only; it does not change which class wins).

Training is episodic on the benchmark's base classes (or a CUB-200 folder's base classes for the
``paper`` profile); evaluation is N-way K-shot on the novel classes the backbone never saw.
Trained backbones are cached (``gradsim_utils.cache``) under a hash of everything that determines
them. :func:`load_cub` reads a CUB-200-2011-style folder with bounding boxes.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from . import data, extract, models, nets, profiles, provenance, training
from .cache import cache_key, content_digest
from .devices import get_device, place
from .profiles import Profile
from .sfam import METRICS

__all__ = ["CODE_VERSION", "TRAINING_FIELDS", "MetricConfig", "config_for_profile", "MetricModel", "build_metric_model",
           "episode_scores", "sample_episodes", "episode_accuracy", "train_metric_model",
           "load_metric_model", "localisation_pairs", "frozen_features", "FewShotData", "benchmark_novel", "CUB_FILES",
           "load_cub", "write_cub_folder", "cub_fingerprint", "FewShotSource", "fewshot_source"]

# 2: contiguous training on CPU (devices.memory_format), the machine recorded in the metrics
CODE_VERSION = "metric-learning-2"


@dataclass(frozen=True)
class MetricConfig:
    """Scale of the SFAM chapter under one profile (its values: ``profiles.chapter_settings(p, "sfam")``).

    backbones: model name per metric; weights: torchvision weights for ``resnetNN`` backbones
    (None: random); train_*: episodic training (``train_steps=0`` keeps the initial weights);
    n_eval_per_class: novel-class images per class in the evaluation pool; n_episodes: episodes
    per accuracy setting; n_loc_episodes: 5-way 1-shot episodes for localisation; n_sanity_pairs:
    query-support pairs of the sanity check; n_sanity_stages: cascade stages scored (None: all);
    micro_batch: images whose graph a training step holds at once (``training.backward_in_chunks``;
    None: the whole episode), to fit an episode of a large backbone on one GPU; autocast: the
    training steps' ``devices.autocast`` (None: float32; "bf16"), evaluation always in float32.
    """

    backbones: tuple[tuple[str, str], ...]
    image_size: int
    base_width: int
    weights: str | None
    n_train_per_class: int
    train_steps: int
    train_way: int
    train_shot: int
    train_query: int
    lr: float
    n_eval_per_class: int
    n_episodes: int
    n_loc_episodes: int
    n_sanity_pairs: int
    n_sanity_stages: int | None
    batch_size: int
    micro_batch: int | None = None
    autocast: str | None = None


    def backbone(self, metric: str) -> str:
        return dict(self.backbones)[metric]


# the fields of MetricConfig that determine the trained weights (and so the cache key)
TRAINING_FIELDS = ("image_size", "base_width", "weights", "n_train_per_class", "train_steps", "train_way",
                   "train_shot", "train_query", "lr", "micro_batch", "autocast")


def config_for_profile(profile: str | Profile, **overrides) -> MetricConfig:
    """The chapter's settings for ``profile`` (a name or Profile), with fields replaced by ``overrides``."""
    return MetricConfig(**profiles.chapter_settings(profile, "sfam", **overrides))


# ---------------------------------------------------------------------------------------------
# model


class MetricModel(nn.Module):
    """A ResNet trunk (everything before global pooling) with a distance or cosine head.

    ``feature_maps(x)`` gives ``A`` (N, C, h, w); ``forward(x)`` the embedding ``p(A)``;
    ``prepare(images, memory_format)`` turns uint8 / 0-1 images into the trunk's normalised input.
    """

    def __init__(self, backbone: nn.Module, metric: str, image_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], name: str):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        parts = [(n, getattr(backbone, n)) for n in
                 ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
                 if hasattr(backbone, n)]
        self.trunk = nn.Sequential(OrderedDict(parts))
        self.metric, self.image_size, self.name = metric, image_size, name
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)), requires_grad=metric == "cosine")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def prepare(self, images: torch.Tensor,
                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """uint8 (0-255) or float (0-1) images -> normalised float input at ``image_size``
        (``nets.prepare_images`` with the trunk's ``mean``/``std``)."""
        return nets.prepare_images(images, self.mean.device, self.mean, self.std, self.image_size, memory_format)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(-2, -1))

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """Feature maps ``A`` of every image (one batched pass, eval mode), on the CPU."""
        fmt = place(self, self.mean.device, backward_enters_conv=False)
        self.eval()
        chunks = range(0, len(images), batch_size)
        return torch.cat([self.feature_maps(self.prepare(images[i:i + batch_size], fmt)).float().cpu()
                          for i in tqdm(chunks, desc=f"{self.name} features", disable=not progress)])


def build_metric_model(metric: str, config: MetricConfig, seed: int = 0) -> MetricModel:
    """The untrained (or ImageNet-initialised, for ``resnetNN``) model for ``metric``."""
    name = config.backbone(metric)
    if name.startswith("tiny-"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = nets.build_tiny_resnet(name, 2, config.base_width)  # fc is dropped below
        mean, std = data.MEAN, data.STD
    else:
        backbone = models.load_model(name, weights=config.weights, seed=seed, device="cpu", progress=False)
        mean, std = backbone.gradsim_info.mean, backbone.gradsim_info.std
    return MetricModel(backbone, metric, config.image_size, mean, std, name)


# ---------------------------------------------------------------------------------------------
# episodes


def episode_scores(queries: torch.Tensor, prototypes: torch.Tensor, metric: str) -> torch.Tensor:
    """Scores (..., Q, C) of queries (..., Q, D) against prototypes (..., C, D).

    Euclidean: ``-||q - p||^2``; cosine: ``cos(q, p)``.
    """
    if metric == "euclidean":
        return -torch.cdist(queries, prototypes).pow(2)
    if metric == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(-1, -2)
    raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")


def sample_episodes(labels: torch.Tensor, n_episodes: int, n_way: int, n_shot: int, n_query: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of ``n_episodes`` N-way K-shot episodes, vectorised (no loop over episodes).

    Returns support (E, n_way, n_shot) and query (E, n_way, n_query) indices into ``labels``
    and the classes (E, n_way). Within an episode no image is used twice.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    classes, counts = labels.unique(return_counts=True)
    for name, value in (("n_episodes", n_episodes), ("n_way", n_way), ("n_shot", n_shot), ("n_query", n_query)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if n_way > len(classes):
        raise ValueError(f"n_way={n_way} exceeds the {len(classes)} classes available")
    need = n_shot + n_query
    if counts.min() < need:
        small = classes[counts.argmin()].item()
        raise ValueError(f"class {small} has {counts.min().item()} images; an episode needs "
                         f"n_shot + n_query = {need}")
    table = torch.full((len(classes), int(counts.max())), -1, dtype=torch.long)
    order = torch.argsort(labels, stable=True)
    position = torch.arange(len(labels)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    table[torch.searchsorted(classes, labels[order]), position] = order
    chosen = torch.rand(n_episodes, len(classes), generator=generator).argsort(1)[:, :n_way]
    rows = table[chosen]                                             # (E, n_way, M)
    keys = torch.rand(rows.shape, generator=generator).masked_fill(rows < 0, 2.0)
    picked = rows.gather(-1, keys.argsort(-1)[..., :need])
    return picked[..., :n_shot], picked[..., n_shot:], classes[chosen]


def episode_accuracy(embeddings: torch.Tensor, support: torch.Tensor, query: torch.Tensor,
                     metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode accuracy (E,) and per-query correctness (E, n_way, n_query) on fixed embeddings."""
    e, way, n_query = query.shape
    prototypes = embeddings[support].mean(2)                         # Eq. 1, (E, way, D)
    scores = episode_scores(embeddings[query].reshape(e, way * n_query, -1), prototypes, metric)
    truth = torch.arange(way).repeat_interleave(n_query)
    correct = (scores.argmax(-1) == truth).reshape(e, way, n_query)
    return correct.float().mean(dim=(1, 2)), correct


def localisation_pairs(embeddings: torch.Tensor, labels: torch.Tensor, n_episodes: int, n_way: int, metric: str,
                       generator: torch.Generator) -> dict:
    """The query-support pairs SFAM's localisation scores (seed 004 section 4.3).

    ``n_episodes`` ``n_way``-way 1-shot episodes with one query each, of a class drawn at random
    (after the episodes, from the same ``generator``); only correctly classified queries are kept, as
    in the seed. Returns ``{"query": (P,), "support": (P, 1), "n_queries": n_episodes}``.
    """
    support, query, _ = sample_episodes(labels, n_episodes, n_way, 1, 1, generator)
    _, correct = episode_accuracy(embeddings, support, query, metric)
    rows, target = torch.arange(len(query)), torch.randint(n_way, (len(query),), generator=generator)
    keep = correct[rows, target, 0]
    return {"query": query[rows, target, 0][keep], "support": support[rows, target][keep], "n_queries": len(query)}


def frozen_features(model: nn.Module, images: torch.Tensor, layer: str | None = None, batch_size: int = 64,
                    device="auto") -> torch.Tensor:
    """Feature maps ``A`` (N, C, h, w) of a frozen classifier used as a metric backbone, float32 on the CPU.

    ``model`` comes from ``models.load_model`` (its ``gradsim_info`` gives the input size, the
    normalisation and, for ``layer=None``, ``final_layer``: the tensor its global pooling averages,
    ``layer4`` of a ResNet, ``bn2`` of an EfficientNet-Lite). One inference pass per batch in eval
    mode (``extract.layer_outputs``); pooling the result gives the embedding ``V = p(A)`` of seed 004.
    """
    layer = nets.model_info(model).final_layer if layer is None else layer
    return extract.layer_outputs(model, images, [layer], batch_size, device)[1][layer]


# ---------------------------------------------------------------------------------------------
# training


def train_metric_model(model: MetricModel, images: torch.Tensor, labels: torch.Tensor,
                       config: MetricConfig, seed: int = 0, device="auto", progress: bool = True) -> dict:
    """Episodic training (``train_way``-way ``train_shot``-shot, ``train_query`` queries per class).

    ``training.optimise``: AdamW (``lr``, weight decay 5e-4) with a one-cycle learning rate
    (warm-up 0.2), one episode per step; the loss is the cross-entropy of the episode's scores
    (Euclidean: negative squared distances; cosine: ``tau * cos``), on contiguous tensors
    (``devices.memory_format``). Any ``train_steps >= 1`` trains; an episode
    needs ``train_shot + train_query`` images of each class (ValueError otherwise). Returns
    training metrics.
    """
    if not isinstance(config.train_steps, int) or config.train_steps < 1:
        raise ValueError(f"train_steps must be an integer >= 1 to train, got {config.train_steps!r}")
    classes, counts = torch.as_tensor(labels).unique(return_counts=True)
    need = config.train_shot + config.train_query
    if len(classes) < 2 or counts.min() < need:
        raise ValueError(f"an episode needs two classes with train_shot + train_query = {need} images each; "
                         f"got {len(classes)} classes, the smallest with {int(counts.min())} images: raise "
                         "n_train_per_class or lower train_shot / train_query")
    dev = get_device(device)
    generator = torch.Generator().manual_seed(seed)
    way = min(config.train_way, len(labels.unique()))
    support, query, _ = sample_episodes(labels, config.train_steps, way, config.train_shot,
                                        config.train_query, generator)
    truth = torch.arange(way, device=dev).repeat_interleave(config.train_query)
    n_support = way * config.train_shot

    def episodes(fmt: torch.memory_format):
        for step in tqdm(range(config.train_steps), desc=f"{model.metric} {model.name}", disable=not progress):
            yield (model.prepare(images[torch.cat([support[step].flatten(), query[step].flatten()])], fmt),)

    def loss_of_embeddings(net: MetricModel, emb: torch.Tensor) -> torch.Tensor:
        prototypes = emb[:n_support].view(way, config.train_shot, -1).mean(1)
        scores = episode_scores(emb[n_support:], prototypes, net.metric)
        if net.metric == "cosine":
            scores = scores * net.log_scale.exp()
        return F.cross_entropy(scores, truth)

    def episode_loss(net: MetricModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if config.micro_batch is None or config.micro_batch >= len(x):
            loss = loss_of_embeddings(net, net(x))
        else:
            loss = training.backward_in_chunks(net, x, lambda emb: loss_of_embeddings(net, emb), config.micro_batch)
        return loss, loss.detach()[None]

    seconds, losses = training.optimise(model, episodes, episode_loss, n_steps=config.train_steps, max_lr=config.lr,
                                        weight_decay=5e-4, pct_start=0.2, device=dev, autocast=config.autocast)
    model.eval()
    return {"train_seconds": seconds,
            "images_per_second": config.train_steps * way * (config.train_shot + config.train_query) / seconds,
            "final_loss": float(np.mean([loss.item() for loss in losses[-10:]])), "n_train": len(labels),
            "steps": config.train_steps, "machine": provenance.training_machine(dev)}


def load_metric_model(metric: str, config: MetricConfig, train_data, data_id: str, seed: int = 0,
                      device="auto", progress: bool = True) -> tuple[MetricModel, dict]:
    """The model for ``metric``, trained on ``train_data()`` -> (images, labels) and cached.

    ``data_id`` must identify the training data (e.g. :func:`training.benchmark_fingerprint` or
    :func:`cub_fingerprint`); it is part of the cache key with the backbone, the config's
    :data:`TRAINING_FIELDS`, the seed and the code version (evaluation settings do not retrain).
    With ``train_steps == 0`` the initial weights are returned and nothing is cached.
    """
    dev = get_device(device)
    model = build_metric_model(metric, config, seed)
    if config.train_steps == 0:
        return model.to(dev).eval(), {"train_seconds": 0.0, "steps": 0, "cached": False, "machine": None}
    key = cache_key(step="metric-model", code_version=CODE_VERSION, metric=metric, seed=seed,
                    data=data_id, backbone=config.backbone(metric),
                    **{f: getattr(config, f) for f in TRAINING_FIELDS})
    fresh = {}

    def train() -> dict:
        images, labels = train_data()
        metrics = train_metric_model(model, images, labels, config, seed, dev, progress)
        fresh["trained"] = True
        return {"state_dict": training.cpu_state(model), "metrics": metrics}

    trained, entry = training.cached_model("metric-models", key, lambda: model, train,
                                           f"{metric} metric model ({config.backbone(metric)}, seed {seed})")
    return trained.to(dev), {**entry["metrics"], "cached": not fresh}


# ---------------------------------------------------------------------------------------------
# data: benchmark novel classes and CUB-200-style folders


@dataclass
class FewShotData:
    """Images (uint8 N x 3 x S x S), labels (N,), boxes (N, 4) as (x0, y0, x1, y1) pixel edges."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def benchmark_novel(n_per_class: int, image_size: int, seed: int = 0) -> FewShotData:
    """The benchmark's novel classes (analysis split), never seen in training."""
    bench = data.make_benchmark(n_per_class=n_per_class, split="analysis", seed=seed,
                                image_size=image_size, classes="novel")
    return FewShotData(bench.images, bench.labels, bench.boxes.float(), list(bench.class_names))


CUB_FILES = ("images.txt", "image_class_labels.txt", "classes.txt", "bounding_boxes.txt")
_CUB_SPLITS = {"base": (2, 0), "val": (4, 1), "novel": (4, 3)}  # class index i: i % a == b


def _read_table(path: Path, n_fields: int) -> dict[int, list[str]]:
    rows = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_fields - 1) if n_fields == 2 else line.split()
        if len(parts) != n_fields:
            raise ValueError(f"{path}:{line_no}: expected {n_fields} fields, got {line!r}")
        rows[int(parts[0])] = parts[1:]
    return rows


def cub_fingerprint(root) -> str:
    """SHA-256 prefix of a CUB folder's index files (identifies its training data for the cache)."""
    return content_digest(*((Path(root) / name).read_bytes() for name in CUB_FILES))[:16]


def load_cub(root, image_size: int, split: str = "novel", max_per_class: int | None = None) -> FewShotData:
    """Read a CUB-200-2011-style folder: ``images/`` plus the index files of :data:`CUB_FILES`.

    ``images.txt`` (``<id> <relative path>``), ``image_class_labels.txt`` (``<id> <class id>``),
    ``classes.txt`` (``<class id> <name>``), ``bounding_boxes.txt`` (``<id> <x> <y> <w> <h>``, pixels).
    Classes are split as in Chen et al. (2019), the split seed 004 follows: with i the 0-based
    class position, base = even i, val = i % 4 == 1, novel = i % 4 == 3. Images keep their aspect
    ratio, as torchvision's Resize(image_size) + CenterCrop(image_size) would make them: shorter side
    to ``image_size`` (bilinear, antialiased), centre crop (``data.square_image``); boxes follow and are
    clipped to the crop (``data.square_box``). An image whose box the crop cuts away entirely is left
    out, with a warning that counts them.
    """
    root = Path(root).expanduser()
    if split not in _CUB_SPLITS:
        raise ValueError(f"split must be one of {list(_CUB_SPLITS)}, got {split!r}")
    missing = [name for name in (*CUB_FILES, "images") if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"cub_root={str(root)!r} is not a CUB-200-2011-style folder: missing {missing}. Expected "
            f"{root}/images/<class folder>/<image>.jpg and the index files {list(CUB_FILES)} as in the "
            "CUB_200_2011 release (set the notebook parameter cub_root to that folder).")
    paths = _read_table(root / "images.txt", 2)
    image_class = {k: int(v[0]) for k, v in _read_table(root / "image_class_labels.txt", 2).items()}
    class_rows = _read_table(root / "classes.txt", 2)
    boxes = {k: [float(x) for x in v] for k, v in _read_table(root / "bounding_boxes.txt", 5).items()}
    class_ids = sorted(class_rows)
    mod, rest = _CUB_SPLITS[split]
    keep = [c for i, c in enumerate(class_ids) if i % mod == rest]
    if not keep:
        raise ValueError(f"{root} has no {split!r} classes ({len(class_ids)} classes in classes.txt)")
    label_of = {c: i for i, c in enumerate(keep)}
    arrays, labels, out_boxes, per_class, cut = [], [], [], {}, []
    for image_id in sorted(paths):
        cls = image_class.get(image_id)
        if cls not in label_of or (max_per_class and per_class.get(cls, 0) >= max_per_class):
            continue
        if image_id not in boxes:
            raise ValueError(f"{root / 'bounding_boxes.txt'} has no box for image id {image_id}")
        path = root / "images" / paths[image_id][0]
        try:
            with Image.open(path) as image:
                array = data.square_image(image.convert("RGB"), image_size)
                size = image.size
        except OSError as err:
            raise data.CorruptImageError(f"cannot read {path}: {err}", [path]) from err
        x, y, w, h = boxes[image_id]
        box = data.square_box((x, y, x + w, y + h), size, image_size)
        if math.isnan(box[0]):
            cut.append(path)
            continue
        arrays.append(array)
        out_boxes.append(box)
        labels.append(label_of[cls])
        per_class[cls] = per_class.get(cls, 0) + 1
    if cut:
        warnings.warn(f"left out {len(cut)} CUB image(s) whose box the centre crop cuts away: "
                      f"{', '.join(p.name for p in cut[:5])}{' ...' if len(cut) > 5 else ''}", stacklevel=2)
    return FewShotData(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
                       torch.tensor(labels), torch.tensor(out_boxes, dtype=torch.float32),
                       [class_rows[c][0] for c in keep])


def write_cub_folder(root, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
                     class_names) -> Path:
    """Write uint8 images (N, 3, H, W) with labels and (x0, y0, x1, y1) boxes in the CUB layout."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:03d}.{name}" for i, name in enumerate(class_names)]
    lines = {name: [] for name in CUB_FILES}
    lines["classes.txt"] = [f"{i + 1} {name}" for i, name in enumerate(names)]
    for image_id, (image, label, box) in enumerate(zip(images, labels.tolist(), boxes.tolist()), 1):
        relative = f"{names[label]}/{names[label]}_{image_id:05d}.jpg"
        (root / "images" / names[label]).mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "images" / relative, quality=95)
        x0, y0, x1, y1 = box
        lines["images.txt"].append(f"{image_id} {relative}")
        lines["image_class_labels.txt"].append(f"{image_id} {label + 1}")
        lines["bounding_boxes.txt"].append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


@dataclass
class FewShotSource:
    """The SFAM chapter's data: what it is (``name``), the novel-class evaluation pool, the training
    data's id for the cache (``data_id``) and ``train_data()`` -> (images, labels) of the base classes."""

    name: str
    novel: FewShotData
    data_id: str
    train_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]


def fewshot_source(profile: Profile, config: MetricConfig, seed: int = 0, cub_root="") -> FewShotSource:
    """The data of ``profile`` at ``config``'s scale: the benchmark's base and novel classes ("benchmark"),
    a CUB-200-2011-style folder ``cub_root`` ("diffusion", i.e. paper; FileNotFoundError without one)
    or a small generated folder in the CUB layout, written to a temporary directory ("diffusion-dryrun")."""
    if profile.data == "benchmark":
        def train_benchmark():
            base = data.make_benchmark(n_per_class=config.n_train_per_class, split="train", seed=seed,
                                       image_size=config.image_size)
            return base.images, base.labels
        novel = benchmark_novel(config.n_eval_per_class, config.image_size, seed)
        return FewShotSource("the controlled benchmark", novel, training.benchmark_fingerprint(seed, config.image_size),
                             train_benchmark)
    if profile.data == "diffusion-dryrun":  # the paper code path on a tiny generated folder
        name = "a generated folder in the CUB-200 layout (dry run)"
        fake = data.make_benchmark(n_per_class=config.n_eval_per_class, image_size=96, seed=seed, classes="all")
        cub_root = write_cub_folder(tempfile.mkdtemp(prefix="gradsim-cub-"), fake.images, fake.labels, fake.boxes,
                                    fake.class_names)
    elif not cub_root:
        raise FileNotFoundError(f"profile {profile.name!r} needs the notebook parameter cub_root: the path of a "
                                "CUB_200_2011-style folder (images/, images.txt, image_class_labels.txt, "
                                "classes.txt, bounding_boxes.txt), e.g. -p cub_root /data/CUB_200_2011")
    else:
        name = "CUB-200-2011"

    def train_cub():
        base = load_cub(cub_root, config.image_size, split="base")
        return base.images, base.labels
    return FewShotSource(name, load_cub(cub_root, config.image_size, split="novel"), cub_fingerprint(cub_root),
                         train_cub)
