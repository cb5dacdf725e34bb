"""Metric-learning models of the SFAM chapter: episodes, scores, training, caching, CUB folders."""
import pytest
import torch

from gradsim_utils import data, metric_learning as ml, profiles, sfam


def _labels(n_classes=6, per_class=5):
    return torch.arange(n_classes).repeat_interleave(per_class)[torch.randperm(n_classes * per_class,
                                                                              generator=torch.Generator().manual_seed(0))]


def test_sample_episodes_shapes_and_classes():
    labels = _labels()
    support, query, classes = ml.sample_episodes(labels, 50, 4, 2, 3, torch.Generator().manual_seed(1))
    assert support.shape == (50, 4, 2) and query.shape == (50, 4, 3) and classes.shape == (50, 4)
    assert all(len(set(c.tolist())) == 4 for c in classes)                       # distinct classes
    assert torch.equal(labels[support], classes[..., None].expand(-1, -1, 2))   # right class
    assert torch.equal(labels[query], classes[..., None].expand(-1, -1, 3))
    both = torch.cat([support.flatten(1), query.flatten(1)], 1)
    assert all(len(set(row.tolist())) == row.numel() for row in both)           # no image twice
    assert len({tuple(c.tolist()) for c in classes}) > 5                         # episodes differ


def test_sample_episodes_rejects_small_classes():
    with pytest.raises(ValueError, match="needs n_shot \\+ n_query = 6"):
        ml.sample_episodes(_labels(per_class=5), 3, 2, 5, 1, torch.Generator())
    with pytest.raises(ValueError, match="n_way=7"):
        ml.sample_episodes(_labels(), 3, 7, 1, 1, torch.Generator())


def test_episode_scores_and_accuracy():
    q, p = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]), torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(ml.episode_scores(q, p, "euclidean"), -torch.tensor([[[1.0, 2.0], [13.0, 4.0]]]))
    assert torch.allclose(ml.episode_scores(q, p, "cosine"), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    # a query near a small prototype but in its direction: the two metrics disagree
    emb = torch.tensor([[1.0, 0.0], [10.0, 1.0], [8.0, 0.0], [9.0, 1.2]])
    support, query = torch.tensor([[[0], [1]]]), torch.tensor([[[2], [3]]])
    acc_e, _ = ml.episode_accuracy(emb, support, query, "euclidean")
    acc_c, _ = ml.episode_accuracy(emb, support, query, "cosine")
    assert acc_e.item() == 0.5 and acc_c.item() == 1.0


def test_metric_model_has_no_head_and_pools_its_feature_maps():
    cfg = ml.config_for_profile("smoke")
    model = ml.build_metric_model("cosine", cfg)
    assert not any("fc" in name for name, _ in model.named_parameters())
    images = data.make_benchmark(n_per_class=1, image_size=cfg.image_size).images[:3]
    maps = model.features(images)
    assert maps.shape == (3, 8 * cfg.base_width, cfg.image_size // 8, cfg.image_size // 8)
    with torch.no_grad():
        assert torch.allclose(model(model.prepare(images)), sfam.pool(maps), atol=1e-5)
    assert len(sfam.randomisation_stages(model)) == 9
    # uint8 and the same pixels as 0-1 floats give one input; other scales and types raise
    torch.testing.assert_close(model.prepare(images), model.prepare(images.float() / 255))
    with pytest.raises(ValueError, match="0-1 scale"):
        model.prepare(images.float())
    with pytest.raises(TypeError, match="uint8"):
        model.prepare(images.to(torch.int16))


def test_training_changes_weights_and_is_cached():
    cfg = ml.config_for_profile("smoke", train_steps=2, image_size=16, n_train_per_class=4, train_way=3,
                                train_shot=1, train_query=1)
    bench = data.make_benchmark(n_per_class=4, split="train", image_size=16)
    calls = []

    def train_data():
        calls.append(1)
        return bench.images, bench.labels

    before = ml.build_metric_model("cosine", cfg).state_dict()
    model, info = ml.load_metric_model("cosine", cfg, train_data, "test-data", progress=False)
    assert not info["cached"] and info["steps"] == 2
    assert not torch.equal(model.state_dict()["trunk.conv1.weight"].cpu(), before["trunk.conv1.weight"])
    assert model.log_scale.item() != pytest.approx(before["log_scale"].item())   # learnt temperature
    again, info2 = ml.load_metric_model("cosine", cfg, train_data, "test-data", progress=False)
    assert info2["cached"] and len(calls) == 1
    assert torch.equal(again.state_dict()["trunk.conv1.weight"], model.state_dict()["trunk.conv1.weight"])


def test_cub_folder_round_trip(tmp_path):
    bench = data.make_benchmark(n_per_class=2, image_size=40, classes="all")
    ml.write_cub_folder(tmp_path, bench.images, bench.labels, bench.boxes, bench.class_names)
    novel = ml.load_cub(tmp_path, image_size=80, split="novel")
    kept = [i for i in range(len(bench.class_names)) if i % 4 == 3]              # Chen et al. split
    assert novel.class_names == [f"{i + 1:03d}.{bench.class_names[i]}" for i in kept]
    assert len(novel) == 2 * len(kept) and novel.images.shape[-2:] == (80, 80)
    first = (bench.labels == kept[0]).nonzero()[0, 0]
    assert torch.allclose(novel.boxes[0], bench.boxes[first].float() * 2, atol=0.11)   # boxes scale with the image
    base = ml.load_cub(tmp_path, image_size=40, split="base")
    assert len(base.class_names) == (len(bench.class_names) + 1) // 2


def test_load_cub_keeps_the_aspect_ratio_and_maps_boxes(tmp_path):
    """A 60 x 40 (w x h) image at 32 px: 48 x 32 bilinear, centre crop at x = 8; boxes follow, clipped."""
    images = torch.full((3, 3, 40, 60), 20, dtype=torch.uint8)
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0], [0.0, 5.0, 8.0, 35.0], [4.0, 0.0, 30.0, 40.0]])
    for image, (x0, y0, x1, y1) in zip(images, boxes.int().tolist()):
        image[:, y0:y1, x0:x1] = 250
    ml.write_cub_folder(tmp_path, images, torch.tensor([0, 0, 1]), boxes, ["wren", "tern"])
    with pytest.warns(UserWarning, match="left out 1 CUB image"):                 # the second: cut away
        base = ml.load_cub(tmp_path, image_size=32, split="base")
    assert base.images.shape == (1, 3, 32, 32) and base.labels.tolist() == [0]
    torch.testing.assert_close(base.boxes[0], torch.tensor([8.0, 8.0, 24.0, 24.0]))  # 0.8 x, minus 8 in x
    white = (base.images[0].float().mean(0) > 200).nonzero()
    assert (white[:, 1].min(), white[:, 1].max(), white[:, 0].min(), white[:, 0].max()) == (8, 23, 8, 23)
    val = ml.load_cub(tmp_path, image_size=32, split="val")                      # class 2 (i % 4 == 1)
    torch.testing.assert_close(val.boxes[0], torch.tensor([0.0, 0.0, 16.0, 32.0]))   # clipped to the crop


def test_load_cub_missing_folder_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match="cub_root"):
        ml.load_cub(tmp_path / "nowhere", image_size=32)
    with pytest.raises(FileNotFoundError, match="profile 'paper' needs the notebook parameter cub_root"):
        ml.fewshot_source(profiles.get_profile("paper"), ml.config_for_profile("paper"), cub_root="")


def test_config_comes_from_the_profile_and_names_unknown_overrides():
    cfg = ml.config_for_profile("quick", n_loc_episodes=7)
    assert cfg == ml.MetricConfig(**{**profiles.PROFILES["quick"].extra["sfam"], "n_loc_episodes": 7})
    assert cfg.image_size == 64 and cfg.backbone("cosine") == "tiny-resnet18"
    with pytest.raises(ValueError, match=r"\['n_loc_episode'\]"):
        ml.config_for_profile("smoke", n_loc_episode=3)


def test_fewshot_source_dryrun_writes_a_cub_folder():
    prof = profiles.get_profile("paper-dryrun")
    source = ml.fewshot_source(prof, ml.config_for_profile(prof, image_size=32, n_eval_per_class=4), seed=1)
    assert "dry run" in source.name and len(source.data_id) == 16
    assert source.novel.images.shape[-2:] == (32, 32) and len(source.novel) == 4 * len(source.novel.class_names)
    images, labels = source.train_data()
    assert len(images) == len(labels) > 0 and labels.unique().tolist() == list(range(int(labels.max()) + 1))


def test_localisation_pairs_keep_the_correct_queries_of_their_episodes():
    labels = _labels(n_classes=6, per_class=5)
    noise = torch.rand(30, 6, generator=torch.Generator().manual_seed(2))
    embeddings = torch.nn.functional.one_hot(labels, 6).float() + 0.8 * noise
    pairs = ml.localisation_pairs(embeddings, labels, 40, 4, "euclidean", torch.Generator().manual_seed(5))
    # the chapter's former cell on the same generator: the same draws in the same order
    generator = torch.Generator().manual_seed(5)
    support, query, _ = ml.sample_episodes(labels, 40, 4, 1, 1, generator)
    _, correct = ml.episode_accuracy(embeddings, support, query, "euclidean")
    rows, target = torch.arange(40), torch.randint(4, (40,), generator=generator)
    keep = correct[rows, target, 0]
    assert torch.equal(pairs["query"], query[rows, target, 0][keep])
    assert torch.equal(pairs["support"], support[rows, target][keep]) and pairs["n_queries"] == 40
    assert 0 < len(pairs["query"]) < 40 and pairs["support"].shape == (len(pairs["query"]), 1)
    assert torch.equal(labels[pairs["query"]], labels[pairs["support"][:, 0]])   # kept queries are correct


def test_sanity_cascade_matches_randomise_at_once():
    cfg = ml.config_for_profile("smoke", image_size=16)
    model = ml.build_metric_model("euclidean", cfg).eval()
    images = data.make_benchmark(n_per_class=1, image_size=16).images[:4]
    query, support = torch.tensor([0, 1]), torch.tensor([[2], [3]])
    records = sfam.sanity_cascade(model, images, query, support, "euclidean", ("sfam",), 16, seed=3, n_stages=2)
    stages = sorted({r["stage"] for r in records})
    assert stages == [0, 1, 9]                                   # trained, top block, everything
    assert all(r["spearman"] == pytest.approx(1.0) for r in records if r["stage"] == 0)
    feats = lambda m: m.features(images)
    reference = sfam.pair_maps(feats(model), query, support, "euclidean", ("sfam",), 16)["sfam"]
    at_once = sfam.pair_maps(feats(sfam.randomise(model, 9, seed=3)), query, support, "euclidean", ("sfam",), 16)["sfam"]
    expected = sfam.rank_correlation(reference, at_once)
    got = [r["spearman"] for r in records if r["stage"] == 9]
    assert got == pytest.approx(expected.tolist())


def test_sanity_cascade_bottom_up_matches_randomise_at_once():
    cfg = ml.config_for_profile("smoke", image_size=16)
    model = ml.build_metric_model("euclidean", cfg).eval()
    images = data.make_benchmark(n_per_class=1, image_size=16).images[:4]
    query, support = torch.tensor([0, 1]), torch.tensor([[2], [3]])
    records = sfam.sanity_cascade(model, images, query, support, "euclidean", ("sfam",), 16, seed=3, n_stages=3,
                                  order="bottom-up")
    assert sorted({r["stage"] for r in records}) == [0, 1, 5, 9]
    assert {r["randomised"] for r in records if r["stage"] == 1} == {"conv1"}        # the stem first
    feats = lambda m: m.features(images)
    reference = sfam.pair_maps(feats(model), query, support, "euclidean", ("sfam",), 16)["sfam"]
    for stage in (1, 5):
        at_once = sfam.randomise(model, stage, seed=3, order="bottom-up")
        expected = sfam.rank_correlation(reference, sfam.pair_maps(feats(at_once), query, support, "euclidean",
                                                                   ("sfam",), 16)["sfam"])
        assert [r["spearman"] for r in records if r["stage"] == stage] == pytest.approx(expected.tolist())


def test_frozen_features_are_what_the_classifier_pools():
    """Oracle: the pooled final-layer maps through the linear head give the model's own logits."""
    from gradsim_utils import models, nets
    model = models.load_model("resnet18", weights=None, device="cpu", progress=False)
    model.train()
    images = torch.randint(0, 256, (5, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    features = ml.frozen_features(model, images, batch_size=2, device="cpu")
    assert features.shape == (5, 512, 7, 7) and features.dtype == torch.float32 and features.min() >= 0
    assert model.training and all(p.requires_grad for p in model.parameters())   # modes restored
    with torch.no_grad():
        logits = model.eval()(nets.prepare_inputs(model, images))
    pooled_logits = sfam.pool(features) @ nets.classifier_weight(model).T + model.fc.bias
    assert (pooled_logits - logits).abs().max() < 1e-4
    early = ml.frozen_features(model, images[:2], layer="layer3", device="cpu")
    assert early.shape == (2, 256, 14, 14)
