"""The memory-format rule (DESIGN.md 5b) and a crash test per trained-model family.

oneDNN's channels-last 1x1 stride-2 convolution writes past its workspace in the backward-weights
pass when the input channels are fewer than its channel block (uxlfoundation/oneDNN issue 6035):
fewer than 16 on CPUs with AVX-512 (Intel Xeon Skylake-SP and later; ``torch.backends.cpu.
get_cpu_capability()`` says "AVX512"), fewer than 8 on AVX2-only CPUs (e.g. AMD EPYC before Zen 4).
Only such CPUs can reveal a regression here: there channels-last training of the metric models
(base width 8, so 8 input channels at layer2's downsample) segfaulted. Elsewhere, and on CUDA,
the family tests pass either way; the format checks below fail everywhere.

Each family trains a few steps through the package's own training function, at its quick shapes,
in a child process, so that a segfault fails that one test with a clear message.
"""
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from gradsim_utils import devices, extract, nets, profiles, training


def test_memory_format_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert devices.memory_format(cpu, backward_enters_conv=False) == torch.channels_last
    assert devices.memory_format(cpu, backward_enters_conv=True) == torch.contiguous_format
    assert devices.memory_format(cuda, backward_enters_conv=False) == torch.contiguous_format
    assert devices.memory_format("cpu", backward_enters_conv=True) == torch.contiguous_format


def _is_channels_last(model: nn.Module) -> bool:
    return model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_place_switches_both_ways():
    net = nets.build_tiny_resnet("tiny-resnet18", 10, 8)
    assert devices.place(net, "cpu", backward_enters_conv=False) == torch.channels_last and _is_channels_last(net)
    assert devices.place(net, "cpu", backward_enters_conv=True) == torch.contiguous_format
    assert not _is_channels_last(net)


def test_graph_enters_convolution():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 8, 8)
    assert devices.graph_enters_convolution(net(x))
    head = net[3]
    features = net[:3](x).detach().requires_grad_()
    assert not devices.graph_enters_convolution(head(features))
    with torch.no_grad():
        assert not devices.graph_enters_convolution(net(x))     # no graph at all


def test_input_gradients_undo_an_inference_pass_channels_last():
    """A model left channels-last by inference is made contiguous before its input gradient."""
    net = nets.build_tiny_resnet("tiny-resnet18", 10, 8).eval()
    x = torch.randn(4, 3, 32, 32)
    extract.representations(net, x, layer="layer4", progress=False)
    assert _is_channels_last(net)                                 # layer4: backward stops at the pooling
    grads, _ = extract.input_gradients(net, x, torch.zeros(4, dtype=torch.long))
    assert not _is_channels_last(net) and grads.shape == x.shape


def test_fit_trains_contiguous_even_after_evaluate():
    net = nets.build_tiny_resnet("tiny-resnet18", 10, 8)
    bench_images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    training.evaluate(net, bench_images, torch.device("cpu"))
    assert _is_channels_last(net)
    seen = []
    net.conv1.register_forward_pre_hook(lambda module, args: seen.append(
        (module.weight.is_contiguous(), args[0].is_contiguous())))
    training.fit(net, bench_images, torch.arange(8) % 2, epochs=1, batch_size=4,
                 generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), desc=None)
    assert seen == [(True, True)] * 2


# ---------------------------------------------------------------------------------------------
# one child process per trained-model family


def _train_in_child(code: str, timeout: int = 300) -> str:
    """Run ``code`` in a fresh interpreter; a signal or non-zero exit fails the test with a clear message."""
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=timeout)
    if run.returncode < 0:
        pytest.fail(f"training died with {signal.Signals(-run.returncode).name} on "
                    f"{torch.backends.cpu.get_cpu_capability()}: a backward through a convolution in "
                    f"channels-last (oneDNN issue 6035, DESIGN.md 5b)?\n{run.stderr[-3000:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_tiny_resnet_family_trains():
    """training.fit, the loop of the book's five tiny ResNets, at the quick shapes (32 px, base 16)."""
    out = _train_in_child("""
        import torch
        from gradsim_utils import data, nets, profiles, training
        prof = profiles.get_profile("quick")
        bench = data.make_benchmark(n_per_class=13, split="train", seed=0, image_size=prof.image_size)
        for name in ("tiny-resnet18", "tiny-resnet50"):
            net = nets.build_tiny_resnet(name, 10, prof.base_width)
            _, (loss,), seen = training.fit(net, bench.images, bench.labels, epochs=1, batch_size=prof.batch_size,
                                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                                            desc=None)
            print(name, seen, loss)
    """)
    rows = [line.split() for line in out.splitlines()]
    assert [r[:2] for r in rows] == [["tiny-resnet18", "128"], ["tiny-resnet50", "128"]]
    assert all(0 < float(r[2]) < 10 for r in rows)


def test_metric_model_family_trains():
    """metric_learning.train_metric_model at the quick shapes (64 px, base width 8: the crash's shape)."""
    out = _train_in_child("""
        import torch
        from gradsim_utils import metric_learning as ml
        config = ml.config_for_profile("quick", train_steps=3)
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (10 * 8, 3, config.image_size, config.image_size), dtype=torch.uint8,
                               generator=gen)
        labels = torch.arange(10).repeat_interleave(8)
        for metric in ("euclidean", "cosine"):
            model = ml.build_metric_model(metric, config)
            metrics = ml.train_metric_model(model, images, labels, config, device="cpu", progress=False)
            print(metric, metrics["steps"], metrics["final_loss"])
    """)
    rows = [line.split() for line in out.splitlines()]
    assert [r[:2] for r in rows] == [["euclidean", "3"], ["cosine", "3"]]


def test_rsvc_marker_model_family_trains(tmp_path):
    """rsvc.marker_models (training.fit through the cached path) at chapter 7's marker shapes."""
    out = _train_in_child(f"""
        import os
        os.environ["GRADSIM_CACHE"] = {str(tmp_path)!r}
        from gradsim_utils import rsvc
        _, _, analysis, _ = rsvc.marker_benchmarks(0, 0.5, 7, 2, 32, 0, include_train=False)
        a, b = rsvc.marker_models("tiny-resnet18", 0, 0.5, 7, analysis, epochs=1, seed=0, device="cpu",
                                  progress=False)
        print(a.gradsim_info.analysis_accuracy, b.gradsim_info.analysis_accuracy)
    """)
    accuracies = [float(v) for v in out.splitlines()[-1].split()]  # earlier lines: the cache's "training ..." notes
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)


def test_gradient_alignment_family_trains():
    """alignment.train_aligned: the double backward of L_cls + lambda L_grad, at chapter 9's quick shapes."""
    out = _train_in_child("""
        from gradsim_utils import alignment
        state, metrics = alignment.train_aligned("tiny-resnet18", form="cosine", lam=1.0, n_train_per_class=7,
                                                 n_analysis_per_class=2, epochs=1, device="cpu", progress=False)
        print(metrics["n_train"], metrics["final_cls_loss"], metrics["final_grad_loss"])
    """)
    n_train, cls_loss, grad_loss = out.split()
    assert n_train == "70" and float(cls_loss) > 0 and float(grad_loss) != 0


# ---------------------------------------------------------------------------------------------
# small data (issue 14, point 5)


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8, 156])
def test_one_cycle_any_length(total_steps):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = training.one_cycle(opt, 0.1, total_steps, pct_start=0.25)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert len(lrs) == total_steps and all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    assert abs(max(lrs) - 0.1) < 1e-9 and lrs[-1] < 0.1 or total_steps == 1  # the peak is reached, then annealed


def test_tiny_resnet_trains_on_a_single_batch():
    """26 images per class (the size that hit OneCycleLR's division by zero) and one batch exactly."""
    for n_per_class, batch in ((26, 64), (7, 70)):
        prof = profiles.get_profile("quick", n_train_per_class=n_per_class, n_analysis_per_class=2, batch_size=batch,
                                    epochs=2, base_width=4)
        _, metrics = training.train_tiny_resnet("tiny-resnet18", prof, device="cpu", progress=False)
        assert metrics["n_train"] == 10 * n_per_class and 0 <= metrics["analysis_accuracy"] <= 1


def test_less_than_one_batch_names_the_parameter():
    prof = profiles.get_profile("quick", n_train_per_class=6, n_analysis_per_class=2, batch_size=64)
    with pytest.raises(ValueError, match=r"60 training images do not fill one batch \(batch_size=64\).*n_train_per_class"):
        training.train_tiny_resnet("tiny-resnet18", prof, device="cpu", progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        training.check_batches(10, 1, 1)


def test_metric_training_small_data_names_the_parameter():
    from gradsim_utils import metric_learning as ml
    config = ml.config_for_profile("smoke", train_steps=5)        # 5 steps: OneCycleLR's zero-length warm-up
    images = torch.randint(0, 256, (3 * 4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(3).repeat_interleave(4)
    metrics = ml.train_metric_model(ml.build_metric_model("euclidean", config), images, labels, config,
                                    device="cpu", progress=False)
    assert metrics["steps"] == 5
    with pytest.raises(ValueError, match=r"train_shot \+ train_query = 4.*n_train_per_class"):
        ml.train_metric_model(ml.build_metric_model("euclidean", config), images[:11], labels[:11], config,
                              device="cpu", progress=False)
    with pytest.raises(ValueError, match="train_steps must be an integer >= 1"):
        ml.train_metric_model(ml.build_metric_model("euclidean", config), images, labels,
                              ml.config_for_profile("smoke", train_steps=0), device="cpu", progress=False)


def test_get_device_turns_tf32_off():
    """cuDNN convolutions default to TF32 ("tf32"); after get_device every float32 path is IEEE."""
    before = torch.backends.fp32_precision
    torch.backends.fp32_precision = "tf32"
    try:
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        devices.get_device("cpu")
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.fp32_precision = before


def test_autocast_runs_convolutions_in_bfloat16_and_names_a_bad_value():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with devices.autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with devices.autocast("cpu", None):
        assert conv(x).dtype == torch.float32
    with pytest.raises(ValueError, match="autocast must be one of"):
        devices.autocast("cpu", "fp16")
