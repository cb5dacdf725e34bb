"""memory.pass_memory against bytes worked out by hand, and the paper estimate's inputs."""
import pytest
import torch
import torchvision
from torch import nn

from gradsim_utils import cost, memory, profiles

F32 = 4


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2, 5))


@pytest.mark.parametrize("mode, saved", [
    ("forward", 0),
    # conv0 keeps its input (3 x 8 x 8), ReLU its output (4 x 8 x 8), conv2 the same storage again; a
    # linear layer keeps its input (the pooled 2-vector) only when its weight needs a gradient
    ("input", (3 * 64 + 4 * 64) * F32),
    ("train", (3 * 64 + 4 * 64 + 2) * F32),
    # from the layer "0" on: its output is a fresh leaf, and ReLU keeps its own output (4 x 8 x 8)
    ("layer", 4 * 64 * F32),
])
def test_saved_bytes_are_the_distinct_storages_autograd_keeps(mode, saved):
    net = _small_net()
    n_params = sum(p.numel() for p in net.parameters())
    result = memory.pass_memory(net, 8, mode, layer="0")
    assert result.saved == saved
    assert result.transient == 2 * 4 * 64 * F32         # twice the largest output: conv0's 4 x 8 x 8
    assert result.output == 4 * 64 * F32
    assert result.state == n_params * F32 * (4 if mode == "train" else 1)
    assert net.training and all(p.requires_grad for p in net.parameters())   # left as it was


def test_extrapolation_from_two_small_sides_is_exact_for_a_resnet():
    net = torchvision.models.resnet18()
    full = memory.pass_memory(net, 128, "input")
    assert memory.pass_memory(net, 128, "input", measure_at=(32, 64)) == full
    assert memory.gpu_bytes(full, 3) == full.state + 3 * (full.saved + full.transient)


def test_bad_arguments_name_the_parameter():
    net = _small_net()
    with pytest.raises(ValueError, match="mode must be one of"):
        memory.pass_memory(net, 8, "backward")
    with pytest.raises(ValueError, match="needs the layer"):
        memory.pass_memory(net, 8, "layer")
    with pytest.raises(ValueError, match="measure_at"):
        memory.pass_memory(net, 8, "input", layer="0", measure_at=(16, 8))
    with pytest.raises(ValueError, match="batch_size"):
        memory.gpu_bytes(memory.pass_memory(net, 8, "forward", layer="0"), 0)


def test_paper_steps_use_the_chapters_batches_and_chapter_8s_micro_batch():
    paper = profiles.get_profile("paper")
    steps = memory.paper_steps(paper, {"02": 32, "03": 64, "04": 64, "05": 64, "06": 64, "07": 128})
    assert {s.chapter for s in steps} == {"02", "03", "04", "05", "06", "07", "08", "09"}
    assert {s.batch_size for s in steps if s.chapter == "07"} == {128}
    assert {s.batch_size for s in steps if s.chapter == "03"} == {64}
    training = [s for s in steps if s.mode == "train" and s.chapter == "08"]
    sfam = paper.extra["sfam"]
    assert [s.model for s in training] == [name for _, name in sfam["backbones"]]
    assert all(s.batch_size == sfam["micro_batch"] < sfam["train_way"] * (sfam["train_shot"] + sfam["train_query"])
               for s in training)
    assert all(s.n_images == paper.n_analysis_per_class * 10 for s in steps if s.chapter == "02")


def test_flops_are_twice_the_multiply_adds_of_each_conv_and_linear():
    net = _small_net()
    # conv0: 3x3, 3 -> 4 on 8 x 8; conv2: 1x1, 4 -> 2 on 8 x 8; linear 2 -> 5
    forward = 2 * (3 * 3 * 3 * 4 * 64 + 1 * 1 * 4 * 2 * 64 + 2 * 5)
    assert cost.pass_flops(net, 8, "forward") == forward
    # input gradients: every layer's input gradient (the forward's cost again), no weight gradients
    assert cost.pass_flops(net, 8, "input") == 2 * forward
    # training: input gradients of all layers but the first, and every weight gradient
    assert cost.pass_flops(net, 8, "train") == 3 * forward - 2 * 3 * 3 * 3 * 4 * 64
    assert next(net.parameters()).device.type == "cpu"   # counted on a meta copy


def test_live_bytes_peak_of_a_forward_is_the_largest_input_output_pair():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1), nn.Conv2d(2, 16, 1))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad(), cost.LiveBytes() as live:
        out = net(x)
    # conv1's output (8 x 64) is alive while conv2 (2 x 64) runs, then conv2's while conv3's (16 x 64) is made
    assert live.peak == max(8 + 2, 2 + 16) * 64 * F32
    assert live.now == out.numel() * F32
    resnet = torchvision.models.resnet18().eval()
    with torch.no_grad(), cost.LiveBytes() as real:
        resnet(torch.rand(1, 3, 64, 64))
    resnet.to("meta")
    with torch.no_grad(), cost.LiveBytes() as meta:
        resnet(torch.zeros(1, 3, 64, 64, device="meta"))
    assert real.peak == meta.peak > 0   # the meta device gives the same sizes without computing


def test_paper_steps_include_chapter_9_at_its_training_batch():
    paper = profiles.get_profile("paper")
    steps = memory.paper_steps(paper, {"02": 32, "03": 64, "04": 64, "05": 64, "06": 64, "07": 128})
    ch9 = [s for s in steps if s.chapter == "09"]
    align = paper.extra["alignment"]
    assert {s.model for s in ch9} == {"tiny-resnet18"} and {s.image_size for s in ch9} == {align["image_size"]}
    aligned = next(s for s in ch9 if s.mode == "aligned")
    assert aligned.batch_size == 64 and aligned.base_width == 16   # alignment.train_aligned's defaults
    n_lam = sum(lam > 0 for _, lam in align["configs"])
    assert aligned.passed == n_lam * align["n_seeds"] * align["epochs"] * align["n_train_per_class"] * 10
    table = memory.estimate(ch9)
    work = cost.estimate(ch9)
    # the double backward keeps more than plain training, and costs more than twice its work per image
    assert table["gpu_gib"][0] > table["gpu_gib"][1]
    assert work["gflop_per_image"][0] > 2 * work["gflop_per_image"][1]
    assert list(work["tflop"]) == pytest.approx(list(work["gflop_per_image"] * work["images"] / 1e3))
