"""Content-addressed cache, profiles and device selection."""
import hashlib
import os

import numpy as np
import pytest
import torch
import torchvision

from gradsim_utils import book, cache, devices, profiles


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADSIM_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_cache_key_is_order_independent_and_sensitive_to_values():
    assert cache.cache_key(a=1, b="x") == cache.cache_key(b="x", a=1)
    assert cache.cache_key(a=1, b="x") != cache.cache_key(a=2, b="x")
    assert len(cache.cache_key(a=1)) == 16


def test_content_digest_hashes_values_in_order():
    t = torch.arange(12, dtype=torch.int16).view(3, 4)
    expected = hashlib.sha256(b"ab" + "x".encode() + t.numpy().tobytes()).hexdigest()
    assert cache.content_digest(b"ab", "x", t) == expected
    assert cache.content_digest(b"ab", "x", t.T.contiguous().T) == expected          # layout does not matter
    assert cache.content_digest(b"ab", "x", np.asfortranarray(t.numpy())) == expected
    assert cache.content_digest("x", b"ab", t) != expected
    with pytest.raises(TypeError, match="content_digest hashes"):
        cache.content_digest(3)


def test_cached_torch_computes_once_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADSIM_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.arange(3.0), "acc": 0.5}

    first = cache.cached_torch("ns", "k1", compute)
    second = cache.cached_torch("ns", "k1", compute)
    assert len(calls) == 1
    assert torch.equal(first["w"], second["w"]) and second["acc"] == 0.5
    assert os.listdir(tmp_path / "ns") == ["k1.pt"]


def test_interrupted_write_leaves_no_entry(tmp_path):
    target = tmp_path / "entry.pt"

    def failing_write(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.atomic_write(target, failing_write)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    plain, atomic = tmp_path / "plain.json", tmp_path / "atomic.json"
    plain.write_text("{}")
    cache.atomic_write(atomic, lambda tmp: tmp.write_text("{}"))
    assert atomic.stat().st_mode == plain.stat().st_mode


def test_unknown_profile_and_overrides():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profiles.get_profile("fast")
    assert profiles.get_profile("quick", epochs=7).epochs == 7
    assert profiles.get_profile("quick").name == "quick"


def test_chapter_settings_copy_the_profile_and_name_unknown_overrides():
    quick = profiles.get_profile("quick")
    assert hash(quick) == hash(profiles.get_profile("quick"))            # extra stays out of the hash
    sizes = profiles.chapter_settings("quick", "alignment", epochs=5)
    assert sizes["epochs"] == 5 and sizes["n_seeds"] == 3
    sizes["configs"] = ()
    assert profiles.chapter_settings(quick, "alignment")["configs"]      # a copy: the profile is unchanged
    assert profiles.chapter_settings("paper-dryrun", "alignment") == profiles.chapter_settings("smoke", "alignment")
    with pytest.raises(ValueError, match=r"unknown rsvc setting\(s\) \['clases'\]"):
        profiles.chapter_settings("smoke", "rsvc", clases=3)
    with pytest.raises(ValueError, match="no settings for chapter 'nope'"):
        profiles.chapter_settings("smoke", "nope")
    assert all(set(p.extra) == {"sfam", "rsvc", "alignment", "lite"} | ({"images"} if p.data != "benchmark" else set())
               for p in profiles.PROFILES.values())


def test_paper_images_are_loaded_as_the_paper_weights_preprocess():
    """The diffusion profiles' resize + crop are every paper model's weights.transforms() sizes."""
    paper = profiles.get_profile("paper")
    for name in paper.models:
        preset = torchvision.models.get_model_weights(name)[paper.weights].transforms()
        for prof in ("paper", "paper-dryrun"):
            assert (profiles.chapter_settings(prof, "images")["resize_size"], profiles.get_profile(prof).image_size) \
                == (preset.resize_size[0], preset.crop_size[0])


def test_device_selection():
    assert devices.get_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices.get_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            devices.get_device("cuda")


def test_runner_parses_parameter_values():
    assert book._parse_value("3") == 3
    assert book._parse_value("0.5") == 0.5
    assert book._parse_value("['layer3', 'layer4']") == ["layer3", "layer4"]
    assert book._parse_value("cpu") == "cpu"


def test_runner_rejects_unknown_chapter_prefix():
    with pytest.raises(ValueError, match="matches no chapter"):
        book.chapter_sources(only=["99"])
