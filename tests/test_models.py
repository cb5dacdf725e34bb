"""Models: loading and caching, weights offline, class names to model outputs."""
import dataclasses
import inspect
import socket
import sys
import time

import pytest
import torch
import torchvision

from gradsim_utils import cache, data, folder_statistics, models, nets, profiles, training


@pytest.fixture(scope="module")
def smoke_models():
    """The smoke profile's models, trained once (cold cache) with the load time measured."""
    start = time.perf_counter()
    loaded = models.models_for_profile("smoke", device="cpu", progress=False)
    return loaded, time.perf_counter() - start


def test_models_for_profile_trains_the_smoke_models(smoke_models):
    loaded, _ = smoke_models
    prof = profiles.get_profile("smoke")
    assert [name for name, _ in loaded] == list(prof.models)
    for name, model in loaded:
        info = model.gradsim_info
        assert not model.training
        assert info.name == name and info.input_size == prof.image_size and info.weights == "trained"
        assert len(info.class_names) == 10
        assert 0.0 <= info.analysis_accuracy <= 1.0 and info.train_seconds > 0
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_second_load_comes_from_the_cache(smoke_models):
    loaded, _ = smoke_models
    first = dict(loaded)["tiny-resnet50"]
    start = time.perf_counter()
    again = models.load_model("tiny-resnet50", profile="smoke", device="cpu", progress=False)
    assert time.perf_counter() - start < 1.0
    for (k, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.gradsim_info == first.gradsim_info
    prof = profiles.get_profile("smoke")
    names = {p.name for p in (cache.cache_dir() / "models").iterdir()}
    assert {f"{training.model_cache_key(n, prof, 0)}.pt" for n in prof.models} <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]  # atomic writes


def test_cached_model_trains_once_and_rebuilds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADSIM_CACHE", str(tmp_path))
    calls = []

    def train():
        calls.append(1)
        net = torch.nn.Linear(2, 2)
        torch.nn.init.ones_(net.weight)
        return {"state_dict": training.cpu_state(net), "metrics": {"accuracy": 0.5}}

    for _ in range(2):
        model, entry = training.cached_model("ns", "key", lambda: torch.nn.Linear(2, 2), train, "net (seed 3)")
        assert not model.training and torch.equal(model.weight, torch.ones(2, 2))
        assert entry == {"metrics": {"accuracy": 0.5}}
    assert len(calls) == 1 and (tmp_path / "ns" / "key.pt").is_file()
    assert capsys.readouterr().out.splitlines() == ["training net (seed 3): no cached weights ns/key",
                                                    "net (seed 3): cached weights ns/key"]   # one line per model


def test_training_is_reproducible_and_reports_metrics(smoke_models):
    loaded, _ = smoke_models
    prof = profiles.get_profile("smoke")
    state, metrics = training.train_tiny_resnet("tiny-resnet18", prof, seed=0, device="cpu", progress=False)
    for key, value in dict(loaded)["tiny-resnet18"].state_dict().items():
        assert torch.equal(state[key], value), key
    n_analysis = 10 * prof.n_analysis_per_class
    assert metrics["n_train"] == 10 * prof.n_train_per_class
    assert metrics["confusion"].shape == (10, 10) and int(metrics["confusion"].sum()) == n_analysis
    assert metrics["analysis_accuracy"] == pytest.approx(
        float(metrics["confusion"].diag().sum()) / n_analysis)
    assert len(metrics["per_class_accuracy"]) == 10
    assert metrics["images_per_second"] > 0 and metrics["final_train_loss"] > 0


@pytest.mark.parametrize("field, value", [
    ("image_size", 40), ("n_train_per_class", 21), ("n_analysis_per_class", 7), ("epochs", 2),
    ("batch_size", 32), ("base_width", 8)])
def test_cache_key_changes_with_every_training_field(field, value):
    base = profiles.get_profile("smoke")
    key = training.model_cache_key("tiny-resnet18", base, seed=0)
    assert training.model_cache_key("tiny-resnet18", base, seed=0) == key
    assert training.model_cache_key("tiny-resnet18", profiles.get_profile("smoke", **{field: value}), 0) != key


def test_cache_key_changes_with_name_seed_and_code_version(monkeypatch):
    prof = profiles.get_profile("smoke")
    key = training.model_cache_key("tiny-resnet18", prof, seed=0)
    assert training.model_cache_key("tiny-resnet34", prof, seed=0) != key
    assert training.model_cache_key("tiny-resnet18", prof, seed=1) != key
    monkeypatch.setattr(training, "CODE_VERSION", training.CODE_VERSION + "-changed")
    assert training.model_cache_key("tiny-resnet18", prof, seed=0) != key


def test_training_seeds_change_the_weights_not_the_images(smoke_models):
    prof = profiles.get_profile("smoke")
    assert profiles.training_seeds(prof, seed=3) == (3, 4) and profiles.get_profile("paper").n_training_seeds == 1
    assert training.model_cache_key("tiny-resnet18", prof, 0, train_seed=0) == training.model_cache_key(
        "tiny-resnet18", prof, 0)  # the first training seed keeps the single run's cache key
    assert training.model_cache_key("tiny-resnet18", prof, 0, train_seed=1) != training.model_cache_key(
        "tiny-resnet18", prof, 0)
    runs = list(models.regime_runs(prof, device="cpu", progress=False))  # model by model, each seed
    assert [(r.name, r.train_seed) for r in runs] == [(n, s) for n in prof.models for s in (0, 1)]
    assert all(r.dataset is runs[0].dataset for r in runs)
    first, second = runs[0].model, runs[1].model
    assert torch.equal(first.conv1.weight, dict(smoke_models[0])["tiny-resnet18"].conv1.weight)
    assert not torch.equal(first.conv1.weight, second.conv1.weight)
    assert [r.train_seed for r in models.regime_runs(prof, "lite", device="cpu", progress=False)] == [None, None]


def test_random_torchvision_weights_are_reproducible():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = models.load_model("resnet18", weights=None, seed=0, device="cpu")
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is left alone
    b = models.load_model("resnet18", weights=None, seed=0, device="cpu")
    c = models.load_model("resnet18", weights=None, seed=1, device="cpu")
    assert torch.equal(a.conv1.weight, b.conv1.weight) and torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert a.gradsim_info.weights is None and len(a.gradsim_info.class_names) == 1000
    assert a.gradsim_info.class_names[281] == "tabby"


def test_random_tiny_resnet_needs_no_training():
    a = models.load_model("tiny-resnet34", profile="smoke", weights=None, seed=3, device="cpu")
    b = models.load_model("tiny-resnet34", profile="smoke", weights=None, seed=3, device="cpu")
    assert torch.equal(a.layer3[0].conv1.weight, b.layer3[0].conv1.weight)
    assert a.gradsim_info.weights is None and a.gradsim_info.analysis_accuracy is None
    assert a.gradsim_info.class_names == data.benchmark_class_names()
    assert a.gradsim_info.class_names[1] == "red-solid-circle"


@pytest.fixture
def empty_hub_dir(tmp_path):
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(before)


def test_missing_imagenet_weights_raise_one_clear_error(empty_hub_dir):
    expected = empty_hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.load_model("resnet50", weights="IMAGENET1K_V1", device="cpu")
    message = str(err.value)
    assert str(expected) in message and "checkpoint=" in message and "resnet50" in message
    assert not empty_hub_dir.exists() or not any(empty_hub_dir.rglob("*"))  # nothing downloaded
    with pytest.raises(models.WeightsUnavailableError, match="resnet18-f37072fd.pth"):
        models.load_model("resnet18", profile="paper", device="cpu")  # the profile's weights


def test_weights_load_from_the_hub_cache_or_a_checkpoint(empty_hub_dir, tmp_path):
    source = models.load_model("resnet18", weights=None, seed=5, device="cpu")
    hub_file = models.hub_checkpoint_path("resnet18", "IMAGENET1K_V1")
    hub_file.parent.mkdir(parents=True)
    torch.save(source.state_dict(), hub_file)
    from_hub = models.load_model("resnet18", weights="IMAGENET1K_V1", device="cpu")
    assert torch.equal(from_hub.fc.weight, source.fc.weight)
    assert from_hub.gradsim_info.weights == "IMAGENET1K_V1"
    local = tmp_path / "mine.pth"
    torch.save(source.state_dict(), local)
    from_file = models.load_model("resnet18", weights=None, checkpoint=local, device="cpu")
    assert torch.equal(from_file.conv1.weight, source.conv1.weight)
    with pytest.raises(models.WeightsUnavailableError, match="nowhere.pth"):
        models.load_model("resnet18", checkpoint=tmp_path / "nowhere.pth", device="cpu")


def test_bad_names_raise_value_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*tiny-resnet18.*lite0.*lite2"):
        models.load_model("resnet19")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        models.load_model("resnet18", weights="IMAGENET_V9")
    with pytest.raises(ValueError, match="torchvision and timm architectures"):
        models.load_model("tiny-resnet18", checkpoint="x.pth")
    with pytest.raises(ValueError, match="vgg11"):  # close matches of a torchvision typo
        models.load_model("vgg12")
    with pytest.raises(ValueError, match="unknown timm model 'resnet19'"):
        models.load_model("timm:resnet19", weights=None)


@pytest.mark.parametrize("name", list(models.LITE_MODELS))
def test_each_efficientnet_lite_sees_a_cat_in_chelsea(name, monkeypatch):
    skimage_data = pytest.importorskip("skimage.data")

    def no_network(*args):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = models.load_model(name, device="cpu")  # offline: the weights come with the package
    info = model.gradsim_info
    assert info.input_size == models.LITE_MODELS[name].input_size and info.mean == info.std == (0.5, 0.5, 0.5)
    assert info.weights == "IMAGENET1K" and len(info.class_names) == 1000
    photo = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).unsqueeze(0)
    inputs = nets.prepare_inputs(model, photo)
    assert inputs.shape == (1, 3, info.input_size, info.input_size)
    with torch.no_grad():
        probs = model(inputs).softmax(1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, info.class_names[top]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(probs[281:286].sum()) > 0.8


def test_a_missing_lite_package_is_named(monkeypatch):
    spec = models.LITE_MODELS["efficientnet-lite1"]
    monkeypatch.setitem(sys.modules, spec.module, None)  # import fails as if not installed
    with pytest.raises(models.WeightsUnavailableError, match=f"install the package {spec.package}"):
        models.load_model("efficientnet-lite1", device="cpu")
    random = models.load_model("efficientnet-lite1", weights=None, device="cpu")  # needs no package
    assert random.gradsim_info.weights is None and random.gradsim_info.input_size == 240


def test_confusion_matrix_matches_scikit_learn():
    from sklearn.metrics import confusion_matrix

    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    preds = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    expected = confusion_matrix(labels.numpy(), preds.numpy(), labels=[0, 1, 2, 3])
    assert training.confusion_matrix(labels, preds, 4).tolist() == expected.tolist()


def test_class_logit_indices_maps_dataset_classes_to_model_outputs():
    imagenet = models.load_model("resnet18", weights=None, device="cpu")
    categories = imagenet.gradsim_info.class_names
    # category names (any case, "_" for a space), the paper's animals (ImageNet spells monarch
    # without "butterfly") and folder indices all find their output
    assert models.class_logit_indices(imagenet, ["goldfish", "Monarch butterfly", "golf_ball", "7"]) == [
        1, 323, categories.index("golf ball"), 7]
    from gradsim_utils import data
    assert models.class_logit_indices(imagenet, [a.name for a in data.ANIMAL_CLASSES]) == [
        a.imagenet_index for a in data.ANIMAL_CLASSES]
    # the benchmark's tiny ResNets: the position in the model's own class list, in any order
    tiny = models.load_model("tiny-resnet18", profile="smoke", weights=None, device="cpu")
    names = list(tiny.gradsim_info.class_names)
    assert models.class_logit_indices(tiny, names[::-1]) == list(range(len(names)))[::-1]
    with pytest.raises(ValueError, match="neither ImageNet class names"):
        models.class_logit_indices(tiny, ["no such class"])


def test_imagenet_class_indices():
    cats = ["tench", "golf ball", "knot", "baseball"]
    assert models.imagenet_class_indices(["knot", "golf_ball", "0"], cats) == [2, 1, 0]
    assert models.imagenet_class_indices(["n3", "n1", "n2", "n0"], cats) == [3, 1, 2, 0]  # full set: sorted order
    with pytest.raises(ValueError, match="neither ImageNet class names"):
        models.imagenet_class_indices(["knot", "kn0t"], cats)


def test_the_lite_names_of_the_profiles_are_the_loaders():
    assert tuple(models.LITE_MODELS) == profiles.LITE_MODEL_NAMES
    for prof in profiles.PROFILES.values():
        assert set(profiles.chapter_settings(prof, "lite")["models"]) <= set(models.LITE_MODELS)


def test_lite_regime_renders_the_benchmark_at_each_model_input_size(monkeypatch):
    from gradsim_utils import extract
    monkeypatch.setitem(profiles.PROFILES["smoke"].extra, "lite",
                        dict(models=("efficientnet-lite0", "efficientnet-lite1"), n_analysis_per_class=2))
    runs = list(models.regime_runs("smoke", "lite", device="cpu", progress=False))
    assert [run.name for run in runs] == ["efficientnet-lite0", "efficientnet-lite1"]
    for run in runs:
        info = run.model.gradsim_info
        size = models.LITE_MODELS[run.name].input_size
        assert run.dataset.images.shape == (20, 3, size, size)
        assert run.dataset.masks.shape[-2:] == (size, size) and run.dataset.boxes.shape == (20, 4)
        assert tuple(run.dataset.class_names) == data.benchmark_class_names()
        # the layers by role: the final layer feeds pooling + classifier, so its gradient weights are rows
        reps = extract.representations(run.model, run.dataset.images[:3], layer=info.final_layer, device="cpu",
                                       progress=False)
        assert extract.gradient_weight_identity_error(run.model, reps, classifier=info.classifier) < 1e-4
        assert nets.classifier_weight(run.model).shape == (1000, reps.features.shape[1])
        mid = extract.representations(run.model, run.dataset.images[:2], layer=info.middle_layer, device="cpu",
                                      progress=False, keep_features=False)
        assert mid.feature_hw == (size // 16 + (size % 16 > 0),) * 2


def test_profile_regime_shares_one_dataset_and_unknown_regimes_are_named(smoke_models):
    runs = list(models.regime_runs("smoke", device="cpu", progress=False, train_seeds=(0,)))
    assert [run.name for run in runs] == list(profiles.get_profile("smoke").models)
    assert [run.train_seed for run in runs] == [0, 0]
    assert runs[0].dataset is runs[1].dataset and runs[0].dataset.images.shape[-1] == 32
    info = runs[0].model.gradsim_info
    assert (info.final_layer, info.middle_layer, info.classifier) == ("layer4", "layer3", "fc")
    assert profiles.get_profile("paper").regime == "paper"
    with pytest.raises(ValueError, match="regime must be 'lite' or the profile's own 'tiny', got 'paper'"):
        next(models.regime_runs("smoke", "paper", device="cpu"))
    assert torch.equal(nets.classifier_weight(runs[0].model), runs[0].model.fc.weight.detach())
    runs[0].model.gradsim_info = dataclasses.replace(info, classifier="layer4")
    with pytest.raises(ValueError, match="classifier 'layer4' of TinyResNet must be an nn.Linear, got Sequential"):
        nets.classifier_weight(runs[0].model)


# ---------------------------------------------------------------------------------------------
# any torchvision or timm model, local checkpoints with their own classes


def _outputs(model, size=64):
    """The model's logits on two seeded random images of ``size`` px."""
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(nets.prepare_images(x, torch.device("cpu"), model.gradsim_info.mean, model.gradsim_info.std))


def test_vgg11_random_loads_with_its_weights_preprocessing():
    model = models.load_model("vgg11", weights=None, seed=2, device="cpu")
    info = model.gradsim_info
    assert (info.input_size, info.resize_size, info.weights) == (224, 256, None)
    assert info.class_names[281] == "tabby" and len(info.class_names) == 1000
    assert (info.final_layer, info.middle_layer, info.classifier) == (None, None, None)  # an MLP head
    again = models.load_model("vgg11", weights=None, seed=2, device="cpu")
    assert torch.equal(_outputs(model), _outputs(again))


def test_timm_model_random_weights():
    model = models.load_model("timm:resnet18", weights=None, seed=0, device="cpu")
    info = model.gradsim_info
    assert info.name == "timm:resnet18" and info.input_size == 224 and info.resize_size == 235  # crop_pct 0.95
    assert (info.final_layer, info.middle_layer, info.classifier) == ("layer4", "layer3", "fc")
    assert _outputs(model).shape == (2, 1000)


@pytest.mark.parametrize("name", ["efficientnet_b0", "timm:resnet18"])
def test_checkpoint_with_class_names_round_trips(name, tmp_path):
    names_file = tmp_path / "classes.txt"
    names_file.write_text("wug\nblicket\n\ndax\n")
    source = models.load_model(name, weights=None, seed=3, class_names=names_file, device="cpu")
    assert source.gradsim_info.class_names == ("wug", "blicket", "dax")
    saved = tmp_path / "mine.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, saved)  # DataParallel keys too
    loaded = models.load_model(name, checkpoint=saved, class_names=names_file, seed=9, device="cpu")
    assert loaded.gradsim_info.class_names == ("wug", "blicket", "dax") and loaded.gradsim_info.weights == str(saved)
    assert torch.equal(_outputs(loaded), _outputs(source)) and _outputs(loaded).shape == (2, 3)
    safetensors_torch = pytest.importorskip("safetensors.torch")
    as_safetensors = tmp_path / "mine.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(as_safetensors))
    again = models.load_model(name, checkpoint=as_safetensors, class_names=names_file, device="cpu")
    assert torch.equal(_outputs(again), _outputs(source))
    with pytest.raises(ValueError, match="class_names="):  # a 3-class head does not fit 1000 outputs
        models.load_model(name, checkpoint=saved, device="cpu")


def test_checkpoint_and_class_name_errors_name_the_parameter_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="class_names=.*nothing.txt"):
        models.load_model("resnet18", weights=None, class_names=tmp_path / "nothing.txt", device="cpu")
    one = tmp_path / "one.txt"
    one.write_text("wug\n")
    with pytest.raises(ValueError, match="class_names=.*one.txt.*at least 2"):
        models.load_model("resnet18", weights=None, class_names=one, device="cpu")
    with pytest.raises(models.WeightsUnavailableError, match="checkpoint=.*gone.pt"):
        models.load_model("densenet121", checkpoint=tmp_path / "gone.pt", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="junk.pt"):
        models.load_model("resnet18", checkpoint=junk, device="cpu")
    two = tmp_path / "two.txt"
    two.write_text("wug\nwug\n")
    with pytest.raises(ValueError, match="two.txt repeats"):
        models.load_model("resnet18", weights=None, class_names=two, device="cpu")
    two.write_text("wug\ndax\n")
    with pytest.raises(ValueError, match="class_names= rebuilds the head"):
        models.load_model("resnet18", weights="IMAGENET1K_V1", class_names=two, device="cpu")


def test_missing_weights_of_any_family_name_the_file_and_folder(empty_hub_dir):
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.load_model("convnext_tiny", weights="DEFAULT", device="cpu")
    message = str(err.value)
    assert "convnext_tiny-983f1562.pth" in message and f"folder {empty_hub_dir / 'checkpoints'}" in message
    assert "checkpoint=" in message
    with pytest.raises(models.WeightsUnavailableError) as err:  # the profile's weights: the model's DEFAULT
        models.load_model("mobilenet_v3_small", profile="paper", device="cpu")
    assert "mobilenet_v3_small" in str(err.value)
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.load_model("timm:resnet18", weights="DEFAULT", device="cpu")
    assert f"folder {empty_hub_dir / 'checkpoints'}" in str(err.value) and "resnet18.a1_in1k" in str(err.value)
    assert not any(empty_hub_dir.rglob("*.pth"))  # nothing downloaded


def test_timm_pretrained_weights_load_from_the_local_cache(empty_hub_dir, monkeypatch):
    def no_network(*args):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    source = models.load_model("timm:resnet18", weights=None, seed=4, device="cpu")
    path = empty_hub_dir / "checkpoints" / "resnet18.a1_in1k.safetensors"
    path.parent.mkdir(parents=True)
    pytest.importorskip("safetensors.torch").save_file(dict(source.state_dict()), str(path))
    loaded = models.load_model("timm:resnet18", weights="DEFAULT", device="cpu")
    assert models.timm_weights_file("resnet18") == path and loaded.gradsim_info.weights == str(path)
    assert torch.equal(_outputs(loaded), _outputs(source))


def test_preprocessing_rows_state_each_profile_from_its_settings():
    rows = {row["profile"]: row for row in models.preprocessing_rows()}
    assert set(rows) == set(profiles.PROFILES) | {"every profile"}
    assert "rendered at 32 px" in rows["smoke"]["images"] and "no resize" in rows["quick"]["preprocessing"]
    preset = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
    assert (f"shorter side to {preset.resize_size[0]} px (bilinear, antialiased), centre crop {preset.crop_size[0]} px, "
            f"mean 0.485/0.456/0.406") in rows["paper"]["preprocessing"]
    assert "Stable Diffusion, 512 px" in rows["paper"]["images"] and "IMAGENET1K_V1" in rows["paper"]["models"]
    assert "224/240/260 px" in rows["every profile"]["images"]
    folder = inspect.signature(folder_statistics.image_folder_stats).parameters   # chapter 6: the same crop
    assert (folder["resize"].default, folder["crop"].default) == (preset.resize_size[0], preset.crop_size[0])
