"""Your models and images: the parameters every chapter takes, checked up front, and each chapter
run on a folder of made-up classes with a non-ResNet torchvision model (random weights) and with a
saved checkpoint plus its class-name file (issue 17, points 1 and 2)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from gradsim_utils import book, models

CLASSES = ("blorp", "quizzle", "snarfle")  # made up: no ImageNet or benchmark class has these names
IMAGES_PER_CLASS = 6  # chapter 7's five folds need five per class


@pytest.fixture(scope="module")
def your_files(tmp_path_factory) -> dict[str, Path]:
    """A folder of three made-up classes (coloured squares on noise, 48 x 64 px), a box CSV for
    every image but one, a ResNet-18 checkpoint with three outputs and its class-name file."""
    root = tmp_path_factory.mktemp("yours")
    rng = np.random.default_rng(0)
    rows = ["file,x0,y0,x1,y1"]
    for c, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            image = rng.integers(0, 80, (48, 64, 3), dtype=np.uint8)
            x0, y0 = int(rng.integers(4, 30)), int(rng.integers(4, 20))
            image[y0:y0 + 20, x0:x0 + 24, c] = 250
            Image.fromarray(image).save(root / "images" / name / f"{i}.png")
            if (c, i) != (0, 0):
                rows.append(f"{name}/{i}.png,{x0},{y0},{x0 + 24},{y0 + 20}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=len(CLASSES)).state_dict(), root / "resnet18.pt")
    return {"images": root / "images", "annotations": root / "boxes.csv", "class_names": root / "classes.txt",
            "checkpoint": root / "resnet18.pt"}


def test_your_models_is_none_without_a_choice():
    assert models.your_models() is None
    assert models.your_models(model_names=None, image_folder="", annotations=None) is None


@pytest.mark.parametrize("parameters, message", [
    ({"model_names": "vgg11"}, r"model_names must be None or a non-empty list"),
    ({"model_names": ["vgg111"]}, r"model_names: unknown model 'vgg111'; close matches: \['vgg11'"),
    ({"model_names": ["vgg11", "vgg11"]}, r"model_names repeats a name"),
    ({"weights": 3}, r"weights must be 'default', a weights name or None"),
    ({"image_folder": "/nonexistent/folder"}, r"image_folder='/nonexistent/folder'.*does not exist"),
    ({"model_names": ["resnet18", "vgg11"], "checkpoint": "CHECKPOINT"}, r"checkpoint needs exactly one architecture"),
    ({"model_names": ["tiny-resnet18"], "checkpoint": "CHECKPOINT"}, r"checkpoint and class_names apply to torchvision"),
    ({"class_names": "CLASS_NAMES"}, r"class_names sets the outputs of the models in model_names"),
    ({"annotations": "ANNOTATIONS"}, r"annotations gives boxes for the images in image_folder"),
])
def test_your_models_names_the_bad_parameter(your_files, parameters, message):
    placeholders = {"CHECKPOINT": your_files["checkpoint"], "CLASS_NAMES": your_files["class_names"],
                    "ANNOTATIONS": your_files["annotations"]}
    parameters = {k: placeholders.get(v, v) if isinstance(v, str) else v for k, v in parameters.items()}
    with pytest.raises(ValueError, match=message):
        models.your_models(**parameters)


def test_your_runs_load_each_model_on_the_folder_at_its_input_size(your_files):
    choice = models.your_models(model_names=["vgg11"], weights=None, image_folder=your_files["images"],
                                annotations=your_files["annotations"])
    assert "vgg11 (random weights)" in choice.describe() and str(your_files["images"]) in choice.describe()
    (run,) = list(models.your_runs("smoke", choice, device="cpu", progress=False))
    assert run.name == "vgg11" and run.model.gradsim_info.final_layer is None  # VGG's head is an MLP
    assert tuple(run.dataset.images.shape) == (len(CLASSES) * IMAGES_PER_CLASS, 3, 224, 224)
    assert list(run.dataset.class_names) == list(CLASSES)
    assert int(run.dataset.has_box.sum()) == len(CLASSES) * IMAGES_PER_CLASS - 1
    # made-up names are not among vgg11's ImageNet outputs: chapters differentiate the predicted class
    assert models.output_targets(run.model, run.dataset.class_names, run.dataset.labels) is None


def test_a_checkpoint_with_its_class_names_maps_the_folder_to_its_outputs(your_files):
    choice = models.your_models(model_names=["resnet18"], checkpoint=your_files["checkpoint"],
                                class_names=your_files["class_names"], image_folder=your_files["images"])
    (run,) = list(models.your_runs("smoke", choice, device="cpu", progress=False))
    expected = torchvision.models.resnet18(num_classes=len(CLASSES))
    expected.load_state_dict(torch.load(your_files["checkpoint"], weights_only=True))
    assert torch.equal(run.model.fc.weight.cpu(), expected.fc.weight)
    assert run.model.gradsim_info.final_layer == "layer4"
    targets = models.output_targets(run.model, run.dataset.class_names, run.dataset.labels)
    assert torch.equal(targets, run.dataset.labels.long())  # class i of the file is output i


def test_without_a_folder_your_models_see_the_profiles_images_at_their_input_size():
    choice = models.your_models(model_names=["vgg11"], weights=None)
    (run,) = list(models.your_runs("smoke", choice, device="cpu", progress=False))
    assert run.dataset.images.shape[-1] == 224 and len(run.dataset.class_names) == 10


CHAPTER = {source.stem[:2]: source for source in book.chapter_sources()}
YOUR_CHAPTERS = ("02", "03", "04", "05", "06", "07", "08", "09")


def _executed_text(notebook: Path) -> str:
    """Every output's text of an executed notebook, joined."""
    cells = json.loads(notebook.read_text())["cells"]
    parts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            parts.extend("".join(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


@pytest.mark.parametrize("chapter", YOUR_CHAPTERS)
@pytest.mark.parametrize("kind", ["vgg11-random", "resnet18-checkpoint"])
def test_chapter_runs_your_model_on_your_folder(tmp_path, your_files, chapter, kind):
    """The chapter runs end to end (smoke profile) on the made-up folder with the reader's model and
    says so in its output."""
    yours = {"image_folder": str(your_files["images"])}
    if kind == "vgg11-random":
        yours.update(model_names=["vgg11"], weights=None, layer="features.28")
    else:
        yours.update(model_names=["resnet18"], checkpoint=str(your_files["checkpoint"]),
                     class_names=str(your_files["class_names"]), annotations=str(your_files["annotations"]))
    parameters = {k: v for k, v in yours.items() if k in book.chapter_parameters(CHAPTER[chapter])}
    assert set(parameters) == set(yours), f"chapter {chapter} lacks {sorted(set(yours) - set(parameters))}"
    out = book.execute_chapter(CHAPTER[chapter], tmp_path, {"profile": "smoke", **parameters}, progress=False)
    text = _executed_text(Path(out))
    assert yours["model_names"][0] in text and str(your_files["images"]) in text


# chapter 06
def test_chapter_06_names_a_bad_paper_model_before_any_slow_step(tmp_path):
    with pytest.raises(book.ChapterFailed, match=r"paper_model: unknown model 'resnet343'"):
        book.execute_chapter(CHAPTER["06"], tmp_path, {"profile": "smoke", "paper_model": "resnet343"}, progress=False)


# chapter 07
@pytest.mark.parametrize("parameters, message", [
    ({"model_names": ["resnet18", "vgg11", "alexnet"]}, r"model_names: RSVC compares one pair, give one or two names"),
    ({"marker_class": 10}, r"marker_class must be an integer >= 0 and <= 9, got 10"),
])
def test_chapter_07_names_a_bad_pair_or_marker_class_before_any_slow_step(tmp_path, parameters, message):
    with pytest.raises(book.ChapterFailed, match=message):
        book.execute_chapter(CHAPTER["07"], tmp_path, {"profile": "smoke", **parameters}, progress=False)
