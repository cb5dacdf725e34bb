"""Two processes on the CPU with gloo (DESIGN.md section 5c): merged results equal one process's.

One ``torch.multiprocessing.start_processes`` of two ranks (file:// rendezvous in a temporary folder) runs
every sharded step once; rank 0 saves what it got, and each test compares it with the same step
run here in one process (one thread on both sides, so convolutions round alike).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from gradsim_utils import class_statistics as cs
from gradsim_utils import data, distributed, extract, models, scale_out
from gradsim_utils import folder_statistics as fs

WORLD = 2
PROMPTS = {"snail": "a photo of a snail", "zebra": "a photo of a zebra"}
N_CLASSES, N_CHANNELS = 4, 6


def _large_mean_data():
    """Features with mean 1e6 and unit spread: shifts by different samples cannot be added."""
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(size=(103, N_CHANNELS)) + np.arange(N_CHANNELS)
    y = np.arange(103) % N_CLASSES
    x[y == 1, 0] += 0.5  # a real class difference in one channel
    return x, y


def _stream(stats, x, y, chunk=10):
    for start in range(0, len(y), chunk):
        stats.update(x[start:start + chunk], y[start:start + chunk])
    return stats


class _FlagSecond(torch.nn.Module):
    """A safety checker that flags (and blacks out, as diffusers does) position 1 of every batch:
    batches are the same in any number of processes, so the flags are too."""

    dtype, device = torch.float32, torch.device("cpu")

    def forward(self, images, clip_input):
        flags = [j == 1 for j in range(len(images))]
        images = images.copy() if isinstance(images, np.ndarray) else images.clone()
        images[1:2] = 0
        return images, flags


class _Features:
    """Stands in for the CLIP feature extractor whose output the checker ignores."""

    def __call__(self, images, return_tensors):
        return self

    def to(self, device):
        self.pixel_values = torch.zeros(1, 3, 8, 8)
        return self


def _pipeline():
    pipe = data.tiny_random_pipeline(image_size=64, seed=0)
    pipe.safety_checker, pipe.feature_extractor = _FlagSecond(), _Features()
    return pipe


def _generate(folder, pipe):
    return data.generate_diffusion(folder, PROMPTS, n_per_class=3, model_id="tiny-test", seed=5,
                                   num_inference_steps=2, image_size=64, device="cpu", pipeline=pipe,
                                   batch_size=2, progress=False)


def _model():
    return models.load_model("resnet18", profile="paper-dryrun", weights=None, device="cpu", seed=0, progress=False)


def _images():
    return torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))


def _folder_stats(root, model):
    return fs.image_folder_stats(root, model, device="cpu", progress=False, resize=64, crop=56, batch_size=2)


def _stats_tensors(stats):
    return {"count": torch.from_numpy(stats.count), "sum": torch.from_numpy(stats.sum),
            "sumsq": torch.from_numpy(stats.sumsq), "shift": torch.from_numpy(stats.shift)}


def _worker(rank, world, init_file, out, pipe):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        got, seconds = {"rank_and_world": list(distributed.rank_and_world()),
                        "shards": [list(distributed.shard(5)), distributed.shard(list("abcde"), contiguous=True)]}, {}
        start = time.perf_counter()
        x, y = _large_mean_data()
        mine = distributed.shard(len(y))
        shift = distributed.broadcast_object(x[mine[0]] if rank == 0 else None)  # x[0], one process's shift
        merged = _stream(cs.ClassStats(N_CLASSES, N_CHANNELS, shift=shift), x[mine], y[mine]).all_reduce()
        got["stats"] = _stats_tensors(merged)
        got["welch"] = torch.from_numpy(merged.welch_t())
        got["means"] = torch.from_numpy(merged.means())
        try:  # each rank shifted by its own first sample: refused on every rank
            _stream(cs.ClassStats(N_CLASSES, N_CHANNELS), x[mine], y[mine]).all_reduce()
        except ValueError as err:
            got["naive_error"] = str(err)
        seconds["class_stats"] = time.perf_counter() - start

        start = time.perf_counter()
        _generate(out / "generated", pipe)
        seconds["generation"] = time.perf_counter() - start

        start = time.perf_counter()
        model = _model()
        folder = _folder_stats(out / "folder", model)
        got["folder"] = {"gap": _stats_tensors(folder.gap["conv"]), "hidden": _stats_tensors(folder.hidden),
                         "thumbnails": folder.thumbnails, "n_images": folder.n_images, "accuracy": folder.accuracy}
        seconds["folder_stats"] = time.perf_counter() - start

        start = time.perf_counter()
        reps = extract.representations_sharded(model, _images(), targets=[1, 2, 3, 4, 5], batch_size=2,
                                               device="cpu", progress=False)
        got["reps_is_none"] = reps is None
        if reps is not None:
            got["reps"] = {"logits": reps.logits, "grad_weights": reps.grad_weights, "targets": reps.targets,
                           "features": reps.features}
        seconds["extraction"] = time.perf_counter() - start
        got["seconds"] = seconds
        torch.save(got, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return _pipeline()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, one_thread, pipe):
    """Rank 0's and rank 1's results of the sharded steps, and the shared folder they used."""
    out = tmp_path_factory.mktemp("ranks")
    rng = np.random.default_rng(0)
    for name in ("knot", "golf_ball", "baseball"):
        (out / "folder" / name).mkdir(parents=True)
        for i in range(2 + (name == "knot")):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(out / "folder" / name / f"{i}.png")
    start = time.perf_counter()
    # fork: the children start with the package imported (spawn would re-import it: ~7 s of CPU
    # each); each sets one thread before any torch work. A deadline turns a hang into a failure.
    ranks = mp.start_processes(_worker, args=(WORLD, out / "rendezvous", out, pipe), nprocs=WORLD, join=False,
                               start_method="fork")
    while not ranks.join(timeout=1):
        if time.perf_counter() - start > 120:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two ranks did not finish within 120 s")
    wall = time.perf_counter() - start
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    print(f"2-process wall time {wall:.1f} s; rank 0 steps (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ranks[0]["seconds"].items()))
    return ranks, out


def test_merged_class_stats_equal_one_process_with_a_large_mean(two_ranks):
    ranks, _ = two_ranks
    assert [r["rank_and_world"] for r in ranks] == [[0, WORLD], [1, WORLD]]
    assert [r["shards"] for r in ranks] == [[[0, 2, 4], ["a", "b"]], [[1, 3], ["c", "d", "e"]]]
    x, y = _large_mean_data()
    one = _stream(cs.ClassStats(N_CLASSES, N_CHANNELS), x, y)
    for r in ranks:  # every rank holds the merged statistics
        np.testing.assert_array_equal(r["stats"]["count"].numpy(), one.count)
        np.testing.assert_array_equal(r["stats"]["shift"].numpy(), one.shift)
        np.testing.assert_allclose(r["stats"]["sum"].numpy(), one.sum, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r["stats"]["sumsq"].numpy(), one.sumsq, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r["welch"].numpy(), one.welch_t(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r["means"].numpy(), one.means(), rtol=1e-12, atol=0)
        assert "same shift on every rank" in r["naive_error"]
    # the contrast: adding sums shifted by each rank's own first sample is far off
    parts = [_stream(cs.ClassStats(N_CLASSES, N_CHANNELS), x[r::WORLD], y[r::WORLD]) for r in range(WORLD)]
    naive = cs.welch_from_sums(sum(p.count for p in parts), sum(p.sum for p in parts), sum(p.sumsq for p in parts))
    assert np.abs(naive - one.welch_t()).max() > 0.1


def test_sharded_generation_is_byte_identical_with_the_same_manifest(two_ranks, pipe, tmp_path):
    _, out = two_ranks
    two = out / "generated"
    one = _generate(tmp_path / "one", pipe)
    pngs = {p.relative_to(one).as_posix(): p.read_bytes() for p in sorted(one.rglob("*.png"))}
    # batches (snail 0, snail 1), (snail 2, zebra 0), (zebra 1, zebra 2): rank 1 ran the second
    assert sorted(pngs) == ["snail/0.png", "snail/2.png", "zebra/1.png"]
    assert {p.relative_to(two).as_posix(): p.read_bytes() for p in sorted(two.rglob("*.png"))} == pngs
    manifest_one, manifest_two = (json.loads((f / "manifest.json").read_text()) for f in (one, two))
    assert manifest_two == manifest_one
    assert manifest_two["n_excluded"] == 3 and manifest_two["nsfw_content_detected"]["zebra"] == \
        {"0": True, "1": False, "2": True}
    assert [e["index"] for e in manifest_two["excluded"]] == [1, 0, 2]  # in batch order
    assert not list(two.rglob("*.tmp"))


def test_sharded_folder_stats_equal_one_process(two_ranks):
    ranks, out = two_ranks
    one = _folder_stats(out / "folder", _model())
    for r in ranks:
        got = r["folder"]
        assert got["n_images"] == one.n_images == 7 and got["accuracy"] == one.accuracy
        assert torch.equal(got["thumbnails"], one.thumbnails)
        for key, stats in (("gap", one.gap["conv"]), ("hidden", one.hidden)):
            np.testing.assert_array_equal(got[key]["count"].numpy(), stats.count)
            np.testing.assert_array_equal(got[key]["shift"].numpy(), stats.shift)
            for field in ("sum", "sumsq"):
                np.testing.assert_allclose(got[key][field].numpy(), getattr(stats, field), rtol=1e-12, atol=1e-12)


def test_scale_out_folder_stats_writes_what_folder_stats_load_reads(two_ranks, tmp_path, capsys):
    _, out = two_ranks
    one = _folder_stats(out / "folder", _model())
    assert scale_out.main(["folder-stats", "--root", str(out / "folder"), "--model", "resnet18", "--profile",
                           "paper-dryrun", "--device", "cpu", "--resize", "64", "--crop", "56", "--batch-size", "2",
                           "--out", str(tmp_path / "stats.pt")]) == 0
    assert "folder-stats on 1 process(es)" in capsys.readouterr().out
    back = fs.FolderStats.load(tmp_path / "stats.pt")
    assert back.class_names == one.class_names and back.n_images == one.n_images
    assert torch.equal(back.thumbnails, one.thumbnails)
    np.testing.assert_array_equal(back.gap["conv"].welch_t(), one.gap["conv"].welch_t())
    np.testing.assert_array_equal(back.hidden.means(), one.hidden.means())
    assert (back.model, back.weights) == ("resnet18", None)
    back.check_model("resnet18", None, "paper_stats_file")
    with pytest.raises(ValueError, match=r"paper_stats_file holds statistics of resnet18 \(random weights\), not of resnet34"):
        back.check_model("resnet34", None, "paper_stats_file")
    with pytest.raises(ValueError, match="not of resnet18 \\(IMAGENET1K_V1\\)"):
        back.check_model("resnet18", "IMAGENET1K_V1", "paper_stats_file")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fs.FolderStats.load(tmp_path / "missing.pt")


def test_sharded_extraction_gathers_in_the_original_order(two_ranks):
    ranks, _ = two_ranks
    assert ranks[1]["reps_is_none"] and not ranks[0]["reps_is_none"]
    one = extract.representations(_model(), _images(), targets=[1, 2, 3, 4, 5], batch_size=2, device="cpu",
                                  progress=False)
    got = ranks[0]["reps"]
    assert got["targets"].tolist() == [1, 2, 3, 4, 5]
    for key in ("logits", "grad_weights", "features"):
        assert got[key].shape == getattr(one, key).shape
        torch.testing.assert_close(got[key], getattr(one, key), rtol=1e-5, atol=1e-6)


def test_one_process_helpers_and_bad_input():
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main()
    assert list(distributed.shard(5)) == [0, 1, 2, 3, 4] and distributed.shard(["a", "b"], contiguous=True) == ["a", "b"]
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert distributed.all_gather_object("x") == ["x"] and distributed.broadcast_object(7) == 7
    with pytest.raises(ValueError, match="items"):
        distributed.shard(-1)
    with pytest.raises(ValueError, match="shift"):
        cs.ClassStats(3, 2, shift=[0.0, np.nan])
    stats = cs.ClassStats(3, 2, shift=[10.0, 20.0]).update(np.array([[11.0, 22.0]]), np.array([0]))
    assert stats.sum.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]] and stats.all_reduce() is stats
