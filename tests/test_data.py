"""Data: controlled benchmark, diffusion generation, image folders, per-profile loading."""
import hashlib
import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import ResNet18_Weights

from gradsim_utils import cache, data, profiles


@pytest.fixture(scope="module")
def bench():
    return data.make_benchmark(n_per_class=12, split="analysis", seed=3, image_size=48)


def _digests(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images}


# ---------------------------------------------------------------- benchmark: determinism

def test_same_arguments_give_identical_benchmark(bench):
    again = data.make_benchmark(n_per_class=12, split="analysis", seed=3, image_size=48)
    assert torch.equal(again.images, bench.images)
    assert torch.equal(again.masks, bench.masks) and torch.equal(again.boxes, bench.boxes)


@pytest.mark.parametrize("change", [{"seed": 4}, {"split": "train"}])
def test_other_seed_or_split_shares_no_image(bench, change):
    other = data.make_benchmark(**{"n_per_class": 12, "split": "analysis", "seed": 3,
                                   "image_size": 48, **change})
    assert other.images.shape == bench.images.shape
    assert not (_digests(other.images) & _digests(bench.images))


def test_image_does_not_depend_on_n_per_class_or_class_set(bench):
    few = data.make_benchmark(n_per_class=5, split="analysis", seed=3, image_size=48)
    assert torch.equal(few.images[:5], bench.images[:5])          # class 0, images 0-4
    everything = data.make_benchmark(n_per_class=12, seed=3, image_size=48, classes="all")
    assert torch.equal(everything.images[:len(bench)], bench.images)


def test_shapes_dtypes_and_labels(bench):
    n = 12 * 10
    assert bench.images.shape == (n, 3, 48, 48) and bench.images.dtype == torch.uint8
    assert bench.labels.dtype == torch.long
    assert torch.equal(bench.labels, torch.arange(10).repeat_interleave(12))
    assert bench.boxes.shape == (n, 4) and bench.boxes.dtype == torch.float32
    assert bench.masks.shape == (n, 48, 48) and bench.masks.dtype == torch.bool
    assert bench.has_marker.shape == (n,) and not bench.has_marker.any()
    assert bench.marker_masks.shape == (n, 48, 48) and not bench.marker_masks.any()
    assert len(bench) == n and bench.split == "analysis" and bench.seed == 3


# ---------------------------------------------------------------- benchmark: ground truth

def test_masks_nonempty_and_boxes_tight(bench):
    for mask, box in zip(bench.masks, bench.boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) > 0
        x0, y0, x1, y1 = box.tolist()
        # x1, y1 are exclusive pixel edges: the box is exactly the extent of the mask
        assert (x0, y0, x1, y1) == (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)


def test_objects_are_large_and_colourful(bench):
    side = (bench.boxes[:, 2:] - bench.boxes[:, :2]).max(dim=1).values / 48
    assert side.min() > 0.25 and side.max() <= 1.0
    assert 0.3 < side.median() < 0.8
    for k in (0, 40, 100):  # object pixels differ from background pixels on average
        img = bench.images[k].float()
        inside, outside = img[:, bench.masks[k]].mean(1), img[:, ~bench.masks[k]].mean(1)
        assert (inside - outside).abs().max() > 20


def test_nuisance_recorded_and_occlusion_rate():
    b = data.make_benchmark(n_per_class=60, seed=1, image_size=32)
    rate = b.nuisance["occluded"].float().mean().item()
    assert 0.09 < rate < 0.2
    assert set(b.nuisance["n_distractors"].tolist()) == {0, 1, 2, 3}
    assert b.nuisance["scale"].min() >= 0.44 and b.nuisance["scale"].max() <= 0.67


def test_class_similarity_is_attribute_overlap(bench):
    names = bench.class_names
    assert len(names) == 10 and len(set(bench.class_attributes)) == 10
    assert bench.attribute_names == ["palette", "pattern", "shape"]
    expected = torch.tensor([[sum(a == b for a, b in zip(ai, aj)) / 3 for aj in bench.class_attributes]
                             for ai in bench.class_attributes])
    sim = bench.class_similarity
    assert torch.allclose(sim, expected)
    assert torch.equal(sim, sim.T) and torch.all(sim.diagonal() == 1)
    off = {round(v, 4) for v in sim[~torch.eye(10, dtype=torch.bool)].tolist()}
    assert off == {0.0, round(1 / 3, 4), round(2 / 3, 4)}
    for name, attrs in zip(names, bench.class_attributes):
        assert name == "-".join(attrs)
    assert "red-striped-circle" in names


def test_novel_classes_are_new_combinations():
    base = data.make_benchmark(n_per_class=2, classes="base", image_size=32)
    novel = data.make_benchmark(n_per_class=2, classes="novel", image_size=32)
    both = data.make_benchmark(n_per_class=2, classes="all", image_size=32)
    assert len(novel.class_names) >= 6
    assert not set(novel.class_attributes) & set(base.class_attributes)
    assert both.class_names == base.class_names + novel.class_names
    assert torch.equal(novel.labels.unique(), torch.arange(len(novel.class_names)))
    values = [set(a[i] for a in base.class_attributes) for i in range(3)]
    for attrs in novel.class_attributes:  # same attribute values, new combinations
        assert all(v in values[i] for i, v in enumerate(attrs))


# ---------------------------------------------------------------- benchmark: shortcut marker

def _assert_markers_consistent(b):
    magenta = torch.tensor(data.MARKER_RGB, dtype=torch.uint8)[:, None]
    side = round(b.images.shape[-1] / 6)
    for k in range(len(b)):
        mm = b.marker_masks[k]
        if not b.has_marker[k]:
            assert not mm.any()
            continue
        assert mm.sum().item() == side * side
        ys, xs = torch.nonzero(mm, as_tuple=True)
        assert xs.max() - xs.min() + 1 == side and ys.max() - ys.min() + 1 == side  # one square
        assert torch.all(b.images[k][:, mm] == magenta)
        assert not (mm & b.masks[k]).any()


def test_class_marker_only_on_marker_class():
    b = data.make_benchmark(n_per_class=20, image_size=48, marker_class="blue-dotted-square",
                            marker_rate=0.5)
    label = b.class_names.index("blue-dotted-square")
    assert b.has_marker[b.labels == label].sum().item() == 10
    assert not b.has_marker[b.labels != label].any()
    _assert_markers_consistent(b)
    # away from the marker the image is the same as without it
    plain = data.make_benchmark(n_per_class=20, image_size=48)
    outside = ~b.marker_masks[:, None].expand_as(b.images)
    assert torch.equal(b.images[outside], plain.images[outside])
    # no magenta pixel anywhere else
    is_magenta = (plain.images == torch.tensor(data.MARKER_RGB, dtype=torch.uint8)[:, None, None]).all(1)
    assert not is_magenta.any()


def test_random_marker_spreads_over_all_classes():
    b = data.make_benchmark(n_per_class=20, image_size=32, marker_mode="random", marker_rate=0.25)
    per_class = torch.bincount(b.labels[b.has_marker], minlength=10)
    assert torch.equal(per_class, torch.full((10,), 5))
    _assert_markers_consistent(b)


# ---------------------------------------------------------------- benchmark: helpers, speed, errors

def test_subset_keeps_per_image_fields_aligned(bench):
    idx = [5, 0, 37]
    sub = bench.subset(idx)
    assert len(sub) == 3 and sub.class_names == bench.class_names
    assert torch.equal(sub.images, bench.images[idx]) and torch.equal(sub.labels, bench.labels[idx])
    assert torch.equal(sub.masks, bench.masks[idx]) and torch.equal(sub.boxes, bench.boxes[idx])
    assert torch.equal(sub.nuisance["scale"], bench.nuisance["scale"][idx])
    assert len(bench.subset(bench.labels == 2)) == 12


@pytest.mark.parametrize("kwargs, name", [
    ({"n_per_class": 0}, "n_per_class"),
    ({"n_per_class": 2.5}, "n_per_class"),
    ({"split": "test"}, "split"),
    ({"seed": -1}, "seed"),
    ({"image_size": 8}, "image_size"),
    ({"classes": "some"}, "classes"),
    ({"marker_rate": 1.5, "marker_class": 0}, "marker_rate"),
    ({"marker_rate": 0.5}, "marker_class"),
    ({"marker_rate": 0.5, "marker_class": 10}, "marker_class"),
    ({"marker_rate": 0.5, "marker_class": "pink-fluffy-star"}, "marker_class"),
    ({"marker_rate": 0.5, "marker_class": 1, "marker_mode": "random"}, "marker_class"),
    ({"marker_mode": "sometimes"}, "marker_mode"),
])
def test_bad_benchmark_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        data.make_benchmark(**{"n_per_class": 2, "image_size": 32, **kwargs})


def test_ten_thousand_images_at_64px_under_30s():
    start = time.perf_counter()
    b = data.make_benchmark(n_per_class=1000, image_size=64)
    elapsed = time.perf_counter() - start
    print(f"\n10,000 benchmark images at 64 px in {elapsed:.1f} s ({torch.get_num_threads()} threads)")
    assert len(b) == 10_000 and elapsed < 30


# ---------------------------------------------------------------- diffusion

def test_animal_classes_match_imagenet():
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(data.ANIMAL_CLASSES) == 10
    assert len({a.imagenet_index for a in data.ANIMAL_CLASSES}) == 10
    assert "snail" in [a.name for a in data.ANIMAL_CLASSES]
    for animal in data.ANIMAL_CLASSES:
        assert categories[animal.imagenet_index].lower() in animal.name.lower()
        assert animal.name in animal.prompt


@pytest.fixture(scope="module")
def tiny_pipe():
    return data.tiny_random_pipeline(image_size=64, seed=0)


PROMPTS = {"snail": "a photo of a snail", "zebra": "a photo of a zebra"}


def _generate(folder, pipe, **kwargs):
    args = {"n_per_class": 2, "model_id": "tiny-test", "seed": 5, "num_inference_steps": 2, "image_size": 64,
            "device": "cpu", "batch_size": 3, "progress": False, **kwargs}
    return data.generate_diffusion(folder, PROMPTS, pipeline=pipe, **args)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_pipe):
    return _generate(tmp_path_factory.mktemp("gen") / "out", tiny_pipe)


def test_generate_diffusion_writes_images_and_manifest(generated):
    for name in PROMPTS:
        files = sorted(p.name for p in (generated / name).iterdir())
        assert files == ["0.png", "1.png"]
        with Image.open(generated / name / "0.png") as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    manifest = json.loads((generated / "manifest.json").read_text())
    assert manifest["model_id"] == "tiny-test" and manifest["prompts"] == PROMPTS
    assert manifest["num_inference_steps"] == 2 and manifest["image_size"] == 64
    assert manifest["guidance_scale"] == 7.5 and manifest["seed"] == 5
    assert manifest["image_seeds"]["zebra"] == [data.image_seed(5, 1, i) for i in range(2)]
    assert len({s for seeds in manifest["image_seeds"].values() for s in seeds}) == 4
    assert {"torch", "diffusers", "transformers"} <= set(manifest["package_versions"])
    assert manifest["dtype"] == "float32" and manifest["device"] == "cpu" and manifest["batch_size"] == 3
    assert manifest["safety_checker"] is False
    # the tiny pipeline has no safety checker: every flag is None and nothing is excluded
    assert manifest["nsfw_content_detected"] == {name: {"0": None, "1": None} for name in PROMPTS}
    assert manifest["excluded"] == [] and manifest["n_excluded"] == 0
    assert data.diffusion_exclusions(generated) == []
    assert not list(generated.rglob("*.tmp"))


class _CountingPipe:
    """Wraps a pipeline and counts the images it is asked for."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []
        self.dtype, self.safety_checker = pipe.dtype, pipe.safety_checker

    def to(self, device):
        return self

    def set_progress_bar_config(self, **kwargs):
        self.pipe.set_progress_bar_config(**kwargs)

    def __call__(self, prompts, **kwargs):
        self.calls.append(list(prompts))
        return self.pipe(prompts, **kwargs)


def test_generate_diffusion_resumes_and_is_deterministic(generated, tiny_pipe, tmp_path):
    counting = _CountingPipe(tiny_pipe)
    before = {p: p.stat().st_mtime_ns for p in generated.rglob("*.png")}
    _generate(generated, counting)
    assert counting.calls == []
    assert {p: p.stat().st_mtime_ns for p in generated.rglob("*.png")} == before
    # a deleted image is regenerated, pixel for pixel, and nothing else is
    (generated / "zebra" / "1.png").unlink()
    _generate(generated, counting)
    assert counting.calls == [["a photo of a zebra"]]
    # same seed in another folder gives the same pixels
    again = _generate(tmp_path / "again", tiny_pipe)
    for name in PROMPTS:
        for i in range(2):
            a = np.asarray(Image.open(generated / name / f"{i}.png"))
            b = np.asarray(Image.open(again / name / f"{i}.png"))
            assert np.array_equal(a, b)
    first, second = (np.asarray(Image.open(generated / "snail" / f"{i}.png")) for i in range(2))
    assert not np.array_equal(first, second)


def test_generate_diffusion_refuses_other_settings(generated, tiny_pipe):
    with pytest.raises(ValueError, match="guidance_scale"):
        _generate(generated, tiny_pipe, guidance_scale=3.0)
    with pytest.raises(ValueError, match="batch_size"):
        _generate(generated, tiny_pipe, batch_size=2)
    manifest_path = generated / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    try:  # a folder made in float16 on a GPU is not resumed in float32 on the CPU
        manifest_path.write_text(json.dumps({**manifest, "dtype": "float16", "device": "cuda"}))
        with pytest.raises(ValueError, match="device, dtype"):
            _generate(generated, tiny_pipe)
    finally:
        manifest_path.write_text(json.dumps(manifest))


def _png_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_resumed_generation_is_byte_identical_to_a_fresh_run(generated, tiny_pipe, tmp_path):
    fresh = _png_bytes(generated)
    assert len(fresh) == 4
    counting = _CountingPipe(tiny_pipe)
    resumed = _generate(tmp_path / "resumed", tiny_pipe)
    (resumed / "snail" / "0.png").unlink()  # in the first batch of three
    (resumed / "zebra" / "1.png").unlink()  # alone in the second batch
    kept = (resumed / "snail" / "1.png").stat().st_mtime_ns
    _generate(resumed, counting)
    # both batches run whole (fixed composition), but only the missing files are written
    assert counting.calls == [["a photo of a snail"] * 2 + ["a photo of a zebra"], ["a photo of a zebra"]]
    assert (resumed / "snail" / "1.png").stat().st_mtime_ns == kept
    assert _png_bytes(resumed) == fresh


class _StubSafetyChecker(torch.nn.Module):
    """Flags the images at the given (call, position) pairs the way diffusers' checker reports
    them: the flagged images come back black and the flags as a list of bools."""

    def __init__(self, flagged):
        super().__init__()
        self.flagged, self.calls = set(flagged), 0
        self.dtype, self.device = torch.float32, torch.device("cpu")  # as a diffusers component reports

    def forward(self, images, clip_input):
        flags = [(self.calls, j) in self.flagged for j in range(len(images))]
        self.calls += 1
        images = images.clone()
        images[torch.tensor(flags)] = 0
        return images, flags


class _StubFeatures:
    """Stands in for the CLIP feature extractor the checker's input comes from."""

    def __call__(self, images, return_tensors):
        return self

    def to(self, device):
        self.pixel_values = torch.zeros(1, 3, 8, 8)
        return self


def test_flagged_images_are_excluded_recorded_and_counted(tmp_path):
    pipe = data.tiny_random_pipeline(image_size=64, seed=0)
    pipe.safety_checker, pipe.feature_extractor = _StubSafetyChecker({(0, 1)}), _StubFeatures()
    folder = _generate(tmp_path / "out", pipe)  # batch 0 is snail 0, snail 1, zebra 0
    assert not (folder / "snail" / "1.png").exists()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        ["snail/0.png", "zebra/0.png", "zebra/1.png"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["nsfw_content_detected"] == {"snail": {"0": False, "1": True},
                                                 "zebra": {"0": False, "1": False}}
    assert manifest["n_excluded"] == 1 and manifest["safety_checker"] is True
    assert data.diffusion_exclusions(folder) == [("snail", 1, data.image_seed(5, 0, 1))]
    # no black image anywhere, and a rerun does not try the flagged image again
    for path in folder.rglob("*.png"):
        assert np.asarray(Image.open(path)).max() > 0
    counting = _CountingPipe(pipe)
    _generate(folder, counting)
    assert counting.calls == []
    loaded = data.load_image_folder(folder, image_size=32, min_per_class=1)
    assert len(loaded) == 3 and loaded.labels.tolist() == [0, 1, 1]
    with pytest.raises(FileNotFoundError, match="manifest"):
        data.diffusion_exclusions(tmp_path)


@pytest.mark.parametrize("kwargs, name", [
    ({"class_prompts": {}}, "class_prompts"),
    ({"class_prompts": {"a/b": "x"}}, "class_prompts"),
    ({"n_per_class": 0}, "n_per_class"),
    ({"image_size": 60}, "image_size"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"batch_size": 0}, "batch_size"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"safety_checker": "off"}, "safety_checker"),
])
def test_bad_generation_arguments_name_the_parameter(tmp_path, kwargs, name):
    args = {"out_dir": tmp_path, "class_prompts": PROMPTS, "n_per_class": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        data.generate_diffusion(**args)


def test_missing_model_fails_fast_with_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model_id = "no-such-org/no-such-diffusion-model"
    start = time.perf_counter()
    with pytest.raises(data.ModelUnavailableError) as err:
        data.generate_diffusion(tmp_path / "out", PROMPTS, n_per_class=1, model_id=model_id,
                                device="cpu", progress=False)
    assert time.perf_counter() - start < 20
    message = str(err.value)
    assert model_id in message and "save_pretrained" in message and "Hugging Face cache" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(data.ModelUnavailableError, match="missing-folder"):
        data.load_diffusion_pipeline(str(tmp_path / "missing-folder"), device="cpu")


# ---------------------------------------------------------------- image folders

def test_load_image_folder_reads_generated_images(generated):
    folder = data.load_image_folder(generated, image_size=32)
    assert folder.images.shape == (4, 3, 32, 32) and folder.images.dtype == torch.uint8
    assert folder.class_names == ["snail", "zebra"]
    assert folder.labels.tolist() == [0, 0, 1, 1]
    assert [p.name for p in folder.paths] == ["0.png", "1.png", "0.png", "1.png"]
    assert folder.skipped == []
    # at the native size the pixels are the PNG's
    native = data.load_image_folder(generated, image_size=64, class_names=["zebra", "snail"])
    assert native.class_names == ["zebra", "snail"]
    png = torch.from_numpy(np.array(Image.open(generated / "zebra" / "0.png"))).permute(2, 0, 1)
    assert torch.equal(native.images[0], png)


def _write_folder(root, sizes=((40, 30), (30, 50))):
    for name, colour in (("cats", (200, 10, 10)), ("dogs", (10, 10, 200))):
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")
    return root


def test_load_image_folder_resizes_and_crops(tmp_path):
    folder = data.load_image_folder(_write_folder(tmp_path / "imgs"), image_size=16)
    assert folder.images.shape == (4, 3, 16, 16)
    assert torch.all(folder.images[0] == torch.tensor([200, 10, 10], dtype=torch.uint8)[:, None, None])


def test_corrupt_images_raise_or_are_skipped(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    bad = [root / "cats" / "2.png", root / "dogs" / "broken.jpg"]
    bad[0].write_bytes(b"not a png at all")
    bad[1].write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.raises(data.CorruptImageError) as err:
        data.load_image_folder(root, image_size=8)
    assert all(str(p) in str(err.value) for p in bad) and sorted(err.value.paths) == sorted(bad)
    with pytest.warns(UserWarning, match="skipped 2"):
        folder = data.load_image_folder(root, image_size=8, on_error="skip")
    assert len(folder) == 4 and sorted(folder.skipped) == sorted(bad)


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        data.load_image_folder(tmp_path / "empty")
    root = _write_folder(tmp_path / "imgs")
    (root / "birds").mkdir()
    with pytest.raises(ValueError, match="birds"):
        data.load_image_folder(root)
    with pytest.raises(FileNotFoundError, match="fish"):
        data.load_image_folder(root, class_names=["cats", "fish"])
    with pytest.raises(ValueError, match="on_error"):
        data.load_image_folder(root, class_names=["cats"], on_error="ignore")
    only_bad = tmp_path / "bad" / "cats"
    only_bad.mkdir(parents=True)
    (only_bad / "0.png").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="cats"):
        data.load_image_folder(tmp_path / "bad", on_error="skip")


# ---------------------------------------------------------------- per-profile loading

def test_profile_data_smoke_benchmark():
    prof = profiles.get_profile("smoke")
    analysis = data.load_profile_data("smoke", seed=0)
    train = data.load_profile_data(prof, split="train", seed=0)
    assert len(analysis) == 10 * prof.n_analysis_per_class and len(train) == 10 * prof.n_train_per_class
    assert analysis.images.shape[-1] == prof.image_size
    assert isinstance(analysis, data.Benchmark) and analysis.boxes.shape == (len(analysis), 4)
    assert not (_digests(analysis.images) & _digests(train.images))


def test_profile_data_dryrun_generates_caches_and_loads(monkeypatch):
    prof = profiles.get_profile("paper-dryrun", image_size=64, n_analysis_per_class=1, diffusion_steps=1)
    folder = data.load_profile_data(prof, seed=0, device="cpu")
    assert folder.images.shape == (10, 3, 64, 64)
    assert folder.class_names == [a.name for a in data.ANIMAL_CLASSES]
    assert folder.labels.tolist() == list(range(10))
    assert folder.excluded == []
    manifest = json.loads((folder.paths[0].parent.parent / "manifest.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["device"] == "cpu"
    # the cache key covers dtype, device and checker: an fp16 GPU folder never serves a CPU run
    keys = []
    monkeypatch.setattr(data, "cache_key", lambda **kw: keys.append(kw) or cache.cache_key(**kw))
    # second call: everything is cached, no pipeline is built
    monkeypatch.setattr(data, "tiny_random_pipeline", lambda **kw: pytest.fail("pipeline rebuilt"))
    again = data.load_profile_data(prof, seed=0, device="cpu")
    assert torch.equal(again.images, folder.images)
    assert keys[0]["dtype"] == "torch.float32" and keys[0]["device"] == "cpu"
    assert keys[0]["safety_checker"] is False and keys[0]["batch_size"] == 4
    with pytest.raises(ValueError, match="train"):
        data.load_profile_data(prof, split="train")
    with pytest.raises(ValueError, match="profile"):
        data.load_profile_data("huge")


def test_sample_photos_are_square_uint8_crops_of_the_skimage_photos():
    import skimage.data

    images, names = data.sample_photos(image_size=96)
    assert images.shape == (4, 3, 96, 96) and images.dtype == torch.uint8
    assert names == ["chelsea", "coffee", "astronaut", "rocket"]
    # the cat photo's mean colour survives the resize (within a few grey levels)
    cat = skimage.data.chelsea().astype(float)
    h, w = cat.shape[:2]
    side = min(h, w)
    crop = cat[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    np.testing.assert_allclose(images[0].float().mean(dim=(1, 2)).numpy(), crop.mean(axis=(0, 1)), atol=3)


# ---------------------------------------------------------------- user folders with boxes

def _user_folder(root):
    """Made-up classes, images of different sizes, each a grey canvas with one white rectangle."""
    rects = {"wugs/a.png": ((80, 40), (20, 10, 60, 30)), "wugs/b.jpg": ((40, 40), (0, 0, 20, 40)),
             "blickets/1.png": ((30, 60), (5, 20, 25, 40)), "blickets/2.png": ((50, 50), (10, 10, 40, 40)),
             "blickets/3.png": ((50, 50), (0, 0, 1, 1))}
    for name, (size, box) in rects.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", size, (90, 90, 90))
        image.paste((255, 255, 255), box)
        image.save(root / name)
    return rects


def test_annotation_csv_gives_boxes_in_the_loaded_images(tmp_path):
    root = tmp_path / "mine"
    rects = _user_folder(root)
    (root / "blickets" / "broken.png").write_bytes(b"junk")
    csv_file = tmp_path / "boxes.csv"
    rows = [f"{name},{','.join(str(v) for v in box)}" for name, (_, box) in rects.items() if name != "blickets/2.png"]
    csv_file.write_text("file,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable .*broken\.png"):
        folder = data.load_image_folder(root, image_size=20, annotations=csv_file, on_error="skip")
    assert folder.class_names == ["blickets", "wugs"] and folder.skipped == [root / "blickets" / "broken.png"]
    keys = [p.relative_to(root).as_posix() for p in folder.paths]
    assert keys == ["blickets/1.png", "blickets/2.png", "blickets/3.png", "wugs/a.png", "wugs/b.jpg"]
    # 3.png's 1 px box at 50 px is 0.4 px at 20 px, inside the crop: kept; 2.png has no row
    assert folder.unboxed == [root / "blickets" / "2.png"]
    assert folder.has_box.tolist() == [True, False, True, True, True] and folder.boxes[1].isnan().all()
    for i in (0, 3, 4):  # the box is where the white pixels are in the loaded image
        x0, y0, x1, y1 = folder.boxes[i].tolist()
        white = (folder.images[i].float().mean(0) > 200).nonzero()
        assert white[:, 1].min() >= math.floor(x0) and white[:, 1].max() < math.ceil(x1), keys[i]
        assert white[:, 0].min() >= math.floor(y0) and white[:, 0].max() < math.ceil(y1), keys[i]
    # wugs/a.png is 80 x 40: scaled by 0.5 to 40 x 20, then cropped at x = 10
    torch.testing.assert_close(folder.boxes[3], torch.tensor([0.0, 5.0, 20.0, 15.0]))


def test_folder_loaded_as_the_weights_transforms(tmp_path):
    """resize_size: each file becomes weights.transforms()'s crop (PIL path), normalising aside; boxes follow."""
    preset = ResNet18_Weights.IMAGENET1K_V1.transforms()
    rng = np.random.default_rng(0)
    root, rows = tmp_path / "photos", []
    for name, (width, height) in {"a/wide.png": (451, 300), "a/tall.png": (250, 333), "b/sq.png": (512, 512)}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        pixels[100:200, 150:300] = 255                                    # white box x 150-300, y 100-200
        Image.fromarray(pixels).save(root / name)
        rows.append(f"{name},150,100,300,200")
    (tmp_path / "boxes.csv").write_text("file,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    folder = data.load_image_folder(root, image_size=224, resize_size=256, annotations=tmp_path / "boxes.csv",
                                    min_per_class=1)
    normalise = transforms.Normalize(preset.mean, preset.std)
    for image, path, box in zip(folder.images, folder.paths, folder.boxes):
        with Image.open(path) as pil:
            expected = preset(pil.convert("RGB"))
        assert (normalise(image.float() / 255) - expected).abs().max().item() < 1e-5, path.name
        x0, y0, x1, y1 = box.tolist()                                      # the white block is inside the box
        white = (image.float().mean(0) > 200).nonzero()
        assert white[:, 1].min() >= math.floor(x0) and white[:, 1].max() < math.ceil(x1), path.name
        assert white[:, 0].min() >= math.floor(y0) and white[:, 0].max() < math.ceil(y1), path.name
    # wide.png 451 x 300 is resized to 384 x 256 (longer side truncated) and cropped at (80, 16)
    sx, sy = 384 / 451, 256 / 300
    torch.testing.assert_close(folder.boxes[folder.paths.index(root / "a/wide.png")],
                               torch.tensor([150 * sx - 80, 100 * sy - 16, 300 * sx - 80, 200 * sy - 16]))
    with pytest.raises(ValueError, match="resize_size"):
        data.load_image_folder(root, image_size=224, resize_size=200)


def test_annotation_and_folder_errors_name_parameter_and_path(tmp_path):
    root = tmp_path / "mine"
    _user_folder(root)
    bad = tmp_path / "bad.csv"
    with pytest.raises(FileNotFoundError, match="annotations=.*bad.csv"):
        data.load_image_folder(root, annotations=bad)
    bad.write_text("path,left,top,right,bottom\n")
    with pytest.raises(ValueError, match="header file,x0,y0,x1,y1"):
        data.load_image_folder(root, annotations=bad)
    bad.write_text("file,x0,y0,x1,y1\nwugs/a.png,5,5,2,9\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        data.load_image_folder(root, annotations=bad)
    bad.write_text("file,x0,y0,x1,y1\nwugs/zzz.png,0,0,2,2\n")
    with pytest.raises(FileNotFoundError, match="wugs/zzz.png"):
        data.load_image_folder(root, annotations=bad)
    (root / "wugs" / "b.jpg").unlink()
    with pytest.raises(ValueError, match=r"fewer than 2 readable images: .*wugs \(1\)"):
        data.load_image_folder(root, image_size=8)
    assert len(data.load_image_folder(root, image_size=8, min_per_class=1)) == 4
    without = data.load_image_folder(root, image_size=8, min_per_class=1)
    assert without.boxes is None and not without.has_box.any() and without.unboxed == []
