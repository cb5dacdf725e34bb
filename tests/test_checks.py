"""Parameter checks: each names the parameter, and every chapter runs them before any slow step."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradsim_utils import book, checks, devices


def test_integers_accept_bounds_and_name_the_parameter():
    checks.integers(1, 5, batch_size=1, n=5)
    checks.integers(2, n_components=None, optional=True)
    checks.integers(0, seed=np.int64(3))
    for bad in (0, 6, 2.0, "3", True, None):
        with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 and <= 5"):
            checks.integers(1, 5, batch_size=bad)
    with pytest.raises(ValueError, match=r"n_components must be an integer >= 2 or None, got 1"):
        checks.integers(2, n_components=1, optional=True)


def test_numbers_in_respects_open_and_closed_ends():
    checks.numbers_in(0, 1, marker_rate=0, share=1.0)
    checks.numbers_in(0, 1, low_open=True, high_open=True, top_share=0.2)
    for bad in (0, 1, -0.1, float("nan"), "0.2", False):
        with pytest.raises(ValueError, match=r"top_share must be a number in \(0, 1\)"):
            checks.numbers_in(0, 1, low_open=True, high_open=True, top_share=bad)


def test_one_of_and_names_in_list_the_choices():
    checks.one_of(["a", None], figure_model=None)
    with pytest.raises(ValueError, match=r"figure_model must be one of \['a', None\], got 'foo'"):
        checks.one_of(["a", None], figure_model="foo")
    checks.names_in(["x", "y", "z"], model_names=["x", "z"], length=2)
    checks.names_in(["x"], model_names=None, optional=True)
    with pytest.raises(ValueError, match=r"model_names: \['q'\] not among"):
        checks.names_in(["x", "y"], model_names=["x", "q"])
    for bad in ("x", [], ["x"], None):
        with pytest.raises(ValueError, match="model_names must be a list of 2 names"):
            checks.names_in(["x", "y"], model_names=bad, length=2)


def test_pairs_are_lists_of_two():
    checks.pairs(configs=[["cosine", 0.0], ("euclidean", 1)])
    for bad in ([], "x", [["cosine"]], ["('cosine', 0.0)"], [["a", 1, 2]]):
        with pytest.raises(ValueError, match="configs must be a non-empty list of two-element lists"):
            checks.pairs(configs=bad)


def test_paths_must_exist_when_given(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    checks.folders(cub_root="", image_folder=None, root=tmp_path)
    checks.files(labels=tmp_path / "f.txt")
    with pytest.raises(ValueError, match=r"cub_root='.*nowhere'.*does not exist"):
        checks.folders(cub_root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"image_folder=.*is not a folder"):
        checks.folders(image_folder=tmp_path / "f.txt")
    with pytest.raises(ValueError, match=r"labels=.*is not a file"):
        checks.files(labels=tmp_path)


def test_enough_per_class_names_short_classes():
    checks.enough_per_class([0, 0, 1, 1], ["a", "b"], 2, "n_folds", "here")
    with pytest.raises(ValueError, match=r"n_folds needs at least 3 images per class, but in here 'a' has 2, 'b' has 1"):
        checks.enough_per_class([0, 0, 1], ["a", "b"], 3, "n_folds", "here")


def test_bad_device_names_the_parameter():
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"):
        devices.get_device("gpu")


def _folder_with_few_images(root: Path) -> Path:
    """Two made-up classes of three small images each (chapter 7 needs n_folds = 5 per class)."""
    rng = np.random.default_rng(0)
    for name in ("okapi-like", "zebra-ish"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


CHAPTER = {source.stem[:2]: source for source in book.chapter_sources()}


@pytest.mark.parametrize("chapter, parameters, message", [
    ("02", {"device": "gpu"}, r"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
    ("03", {"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ("04", {"figure_model": "foo"}, r"figure_model must be one of \[None, 'tiny-resnet18'"),
    ("05", {"grid_class": 42}, r"grid_class must be an integer >= 0 and <= 9, got 42"),
    ("06", {"image_folder": "/nonexistent/images"}, r"image_folder='/nonexistent/images'.*does not exist"),
    ("07", {"image_folder": "FOLDER"}, r"n_folds needs at least 5 images per class, but in image_folder="),
    ("08", {"cub_root": "/nonexistent/CUB_200_2011"}, r"cub_root='/nonexistent/CUB_200_2011'.*does not exist"),
    ("09", {"configs": [["cosine", 0.0], ["manhattan", 1.0]]}, r"configs must be one of \['euclidean', 'cosine'\], got 'manhattan'"),
    ("09", {"configs": [("cosine", 0.0)]}, r"configs must be a non-empty list of two-element lists"),
])
def test_chapter_rejects_a_bad_parameter_before_any_slow_step(tmp_path, monkeypatch, chapter, parameters, message):
    """The issue's cases: each fails in the chapter's set-up with an error naming the parameter (on
    the smoke profile), before any model is trained or cached."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADSIM_CACHE", str(cache))
    if parameters.get("image_folder") == "FOLDER":
        parameters = {**parameters, "image_folder": str(_folder_with_few_images(tmp_path / "images"))}
    with pytest.raises(book.ChapterFailed, match=message):
        book.execute_chapter(CHAPTER[chapter], tmp_path / "out", {"profile": "smoke", **parameters}, progress=False)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), "a model was cached"


def test_integers_return_python_ints():
    assert checks.integers(0, seed=np.int64(3)) == 3 and type(checks.integers(0, seed=np.int64(3))) is int
    assert checks.integers(1, a=2, b=None, optional=True) == (2, None)
