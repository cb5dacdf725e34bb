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

from gradsim_utils import alignment, book, models

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
            parts.extend("".join(v) for k, v in output.get("data", {}).items()  # glued values included
                         if k.endswith(("text/plain", "text/html", "text/markdown")))
    return "\n".join(parts)


YOURS = {  # the two runs of each chapter: a non-ResNet torchvision model, and a saved checkpoint
    "vgg11-random": lambda files: {"model_names": ["vgg11"], "weights": None,
                                   "layer": "features.19"},  # vgg11's last ReLU (RSVC's NMF needs >= 0)
    "resnet18-checkpoint": lambda files: {"model_names": ["resnet18"], "checkpoint": str(files["checkpoint"]),
                                          "class_names": str(files["class_names"]),
                                          "annotations": str(files["annotations"])},
}


@pytest.fixture(scope="module")
def chapter_run(tmp_path_factory, your_files):
    """``chapter_run(chapter, kind)``: the executed notebook of the chapter on smoke with the made-up
    folder and the ``kind`` of model (run once per module), with its parameters."""
    done = {}

    def run(chapter: str, kind: str) -> tuple[Path, dict]:
        if (chapter, kind) not in done:
            parameters = {"image_folder": str(your_files["images"]), **YOURS[kind](your_files)}
            known = book.chapter_parameters(CHAPTER[chapter])
            assert set(parameters) <= set(known), f"chapter {chapter} lacks {sorted(set(parameters) - set(known))}"
            out = book.execute_chapter(CHAPTER[chapter], tmp_path_factory.mktemp(f"ch{chapter}-{kind}"),
                                       {"profile": "smoke", **parameters}, progress=False)
            done[chapter, kind] = Path(out), parameters
        return done[chapter, kind]
    return run


@pytest.mark.parametrize("chapter", YOUR_CHAPTERS)
@pytest.mark.parametrize("kind", list(YOURS))
def test_chapter_runs_your_model_on_your_folder(chapter_run, chapter, kind):
    """The chapter runs end to end (smoke profile) on the made-up folder with the reader's model and
    says so in its output."""
    out, parameters = chapter_run(chapter, kind)
    text = _executed_text(out)
    assert parameters["model_names"][0] in text and parameters["image_folder"] in text


def test_chapter_09_trains_a_checkpoint_on_its_weights_own_preprocessing(chapter_run):
    """Starting weights see the folder as their transforms() would (resnet18: shorter side 256, crop 224);
    random weights at the chapter's own size."""
    assert "shorter side to 256 px, centre crop 224 px" in _executed_text(chapter_run("09", "resnet18-checkpoint")[0])
    assert "shorter side to" not in _executed_text(chapter_run("09", "vgg11-random")[0])


# chapter 04


def test_chapter_04_figure_model_is_checked_against_your_model_names(tmp_path, your_files):
    """figure_model must name one of the reader's models (not the profile's) and fails before any clustering."""
    with pytest.raises(book.ChapterFailed, match=r"figure_model.*vgg11"):
        book.execute_chapter(CHAPTER["04"], tmp_path, {"profile": "smoke", "model_names": ["vgg11"], "weights": None,
                                                      "image_folder": str(your_files["images"]),
                                                      "figure_model": "tiny-resnet18"}, progress=False)


# chapter 05


def test_chapter_05_checks_layer_up_front_with_close_matches(tmp_path, your_files):
    """A layer name the model lacks fails at the first model, naming close matches, before any map."""
    with pytest.raises(book.ChapterFailed, match=r"unknown layer 'features\.28' in VGG; close matches"):
        book.execute_chapter(CHAPTER["05"], tmp_path, {"profile": "smoke", "model_names": ["vgg11"], "weights": None,
                                                      "image_folder": str(your_files["images"]),
                                                      "layer": "features.28"}, progress=False)


# chapter 08


def test_sfam_chapter_localises_only_the_boxed_images_of_your_folder(tmp_path, your_files):
    """Chapter 8 on the three-class folder: episodes of min(5, classes) ways, localisation on the
    images with a box (the one without is left out and counted)."""
    parameters = {"profile": "smoke", "model_names": ["resnet18"], "checkpoint": str(your_files["checkpoint"]),
                  "class_names": str(your_files["class_names"]), "image_folder": str(your_files["images"]),
                  "annotations": str(your_files["annotations"]), "n_train_seeds": 1}
    text = _executed_text(Path(book.execute_chapter(CHAPTER["08"], tmp_path, parameters, progress=False)))
    assert "3-way episodes (5-way needs 5 classes; this data has 3)" in text
    assert f"localisation on the {len(CLASSES) * IMAGES_PER_CLASS - 1} images with a box" in text
    assert "1 left out" in text and "resnet18 (euclidean)" in text


# chapter 09


def test_alignment_start_model_has_one_output_per_class_at_the_chapters_size(your_files):
    model, targets = alignment.start_model("vgg11", CLASSES, image_size=32, seed=0)
    assert model.classifier[-1].out_features == len(CLASSES) and model.gradsim_info.input_size == 32
    assert targets.tolist() == [0, 1, 2]
    again, _ = alignment.start_model("vgg11", CLASSES, image_size=32, seed=0)
    assert torch.equal(model.features[0].weight, again.features[0].weight)  # seeded
    start, targets = alignment.start_model("resnet18", CLASSES, checkpoint=your_files["checkpoint"],
                                           class_file=your_files["class_names"], image_size=32)
    assert start.gradsim_info.input_size == 224 and targets.tolist() == [0, 1, 2]  # starting weights: own size
    with pytest.raises(ValueError, match=r"weights: resnet18's outputs \(3 classes\) do not include"):
        alignment.start_model("resnet18", ["cat", "dog"], checkpoint=your_files["checkpoint"],
                              class_file=your_files["class_names"])


def test_alignment_split_per_class_is_seeded_and_names_the_parameter():
    labels = torch.arange(3).repeat(6)
    train, analysis = alignment.split_per_class(labels, seed=1)
    assert sorted(train.tolist() + analysis.tolist()) == list(range(18))
    assert torch.bincount(labels[analysis]).tolist() == [3, 3, 3]
    assert torch.equal(alignment.split_per_class(labels, seed=1)[0], train)
    assert not torch.equal(alignment.split_per_class(labels, seed=2)[0], train)
    with pytest.raises(ValueError, match=r"image_folder: class 2 has 2 images"):
        alignment.split_per_class(torch.tensor([0, 0, 0, 1, 1, 1, 2, 2]))


def test_alignment_measures_leave_the_inner_conv_empty_without_residual_blocks():
    model, _ = alignment.start_model("vgg11", CLASSES, image_size=32, seed=0)
    assert alignment.inner_conv(model, "features.18") is None
    assert alignment.inner_conv(models.load_model("tiny-resnet18", "smoke", weights=None), "layer4") == "layer4.1.conv2"
    images = torch.randint(0, 255, (9, 3, 32, 32), dtype=torch.uint8)
    measures = alignment.alignment_measures(model.eval(), images, torch.arange(3).repeat(3), layer="features.18",
                                            device="cpu")
    assert np.isnan(measures["gw_inner_within"]) and np.isfinite(measures["gw_layer4_within"])


# chapter 02


def _glued(notebook: Path) -> dict:
    """The values an executed notebook glued, by name (as their text)."""
    glued = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                glued[name] = output["data"].get("application/papermill.record/text/plain")
    return glued


def _vgg11_run(chapter: str, chapter_run) -> tuple[dict, dict]:
    """What chapter ``chapter``'s vgg11 run glued and the claims it recorded (by '<claim id>@<regime>')."""
    out, _ = chapter_run(chapter, "vgg11-random")
    records = json.loads((out.parent / "_results" / f"{out.stem}.json").read_text())
    return _glued(out), records


def test_chapter_02_skips_the_identity_where_the_head_is_not_gap_linear(chapter_run):
    glued, records = _vgg11_run("02", chapter_run)
    assert glued["layer_text"] == "'features.19'"
    assert "features.19 of vgg11" in glued["identity_text"] and "does not apply" in glued["identity_text"]
    assert "no accuracy" in glued["accuracy_text"] and "predicted class" in glued["variant_target"]
    assert "vgg11 has no stage" in glued["hooks_text"] and "vgg11 has no residual stage" in glued["hooks_text"]
    assert glued["label_max_diff"] == "nan"  # no identity row: no difference to report
    assert "ch02_gw_equals_labels@yours" not in records and "ch02_gw_equals_labels@lite" in records
    assert not any(key.endswith("@tiny") for key in records)  # your models never pass for the profile's


# chapter 03


def test_chapter_03_leaves_out_the_claims_vgg11_cannot_give(chapter_run):
    glued, records = _vgg11_run("03", chapter_run)
    assert "the hooked layer is features.19; there is no middle layer" in glued["hooks_text"]
    assert "taken at each image's predicted class" in glued["hooks_text"]
    assert "identity does not apply" in glued["identity_text"]
    assert not any(key.endswith("@tiny") for key in records)  # your models never pass for the profile's
    own = {key for key in records if key.endswith("@yours")}
    assert own == {"ch03_gw_above_p_fm@yours", "ch03_fm_above_p@yours", "ch03_input_grad_above_p_fm@yours"}
    assert all(records[key]["parameters"]["model_names"] == ["vgg11"] for key in own)
    assert len([key for key in records if key.endswith("@lite")]) == 5  # the Lite regime is unchanged


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
