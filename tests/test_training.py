"""training.backward_in_chunks (gradient caching) against one backward of the same computation."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradsim_utils import data, metric_learning as ml, training


def _net(batch_norm: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6) if batch_norm else nn.Identity(), nn.ReLU(),
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)]
    return nn.Sequential(*layers).double().train()


def _loss(outputs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A loss that couples the images (prototypes of the first half score the second half)."""
    prototypes = outputs[:4].view(2, 2, -1).mean(1)
    scores = -torch.cdist(outputs[4:], prototypes) ** 2 * scale
    return F.cross_entropy(scores, torch.tensor([0, 0, 1, 1]))


def _grads(net: nn.Module, scale: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.parameters()] + [scale.grad.clone()]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_chunked_backward_equals_one_backward_of_the_chunked_forward(batch_norm):
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference, chunked = _net(batch_norm), _net(batch_norm)
    scale_ref = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    # reference: one graph over the same chunks (each BatchNorm chunk normalised by its own statistics)
    loss_ref = _loss(torch.cat([reference(c) for c in x.split(3)]), scale_ref)
    loss_ref.backward()
    loss = training.backward_in_chunks(chunked, x, lambda out: _loss(out, scale), micro_batch=3)
    assert not loss.requires_grad and loss.item() == pytest.approx(loss_ref.item(), abs=1e-12)
    for a, b in zip(_grads(chunked, scale), _grads(reference, scale_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(chunked.buffers(), reference.buffers()):   # running statistics: once per chunk
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    if not batch_norm:   # no batch statistics: the gradient of the whole batch at once
        whole = _net(False)
        scale_whole = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        _loss(whole(x), scale_whole).backward()
        for a, b in zip(_grads(chunked, scale), _grads(whole, scale_whole)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_backward_rejects_a_bad_micro_batch():
    with pytest.raises(ValueError, match="micro_batch"):
        training.backward_in_chunks(_net(False), torch.zeros(2, 3, 8, 8, dtype=torch.float64), lambda o: o.sum(), 0)


def test_metric_training_with_micro_batches_trains_and_has_its_own_cache_entry():
    settings = dict(train_steps=2, image_size=16, n_train_per_class=4, train_way=3, train_shot=1, train_query=1)
    bench = data.make_benchmark(n_per_class=4, split="train", image_size=16)
    whole, info = ml.load_metric_model("euclidean", ml.config_for_profile("smoke", **settings),
                                       lambda: (bench.images, bench.labels), "test-micro", progress=False)
    micro, info_micro = ml.load_metric_model("euclidean", ml.config_for_profile("smoke", micro_batch=2, **settings),
                                             lambda: (bench.images, bench.labels), "test-micro", progress=False)
    assert not info_micro["cached"] and info_micro["steps"] == 2 and torch.isfinite(torch.tensor(info_micro["final_loss"]))
    # chunks of two images normalise by other batch statistics than the six-image episode
    assert not torch.equal(micro.state_dict()["trunk.conv1.weight"], whole.state_dict()["trunk.conv1.weight"])


def test_metric_training_under_bf16_autocast_keeps_float32_weights_and_its_own_cache_entry():
    settings = dict(train_steps=2, image_size=16, n_train_per_class=4, train_way=3, train_shot=1, train_query=1)
    bench = data.make_benchmark(n_per_class=4, split="train", image_size=16)
    fp32, _ = ml.load_metric_model("euclidean", ml.config_for_profile("smoke", **settings),
                                   lambda: (bench.images, bench.labels), "test-autocast", progress=False)
    config = ml.config_for_profile("smoke", autocast="bf16", **settings)
    model = ml.build_metric_model("euclidean", config)
    seen = []
    model.trunk.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    info = ml.train_metric_model(model, bench.images, bench.labels, config, progress=False)
    assert seen and set(seen) == {torch.bfloat16}   # the training forward ran in bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters()) and torch.isfinite(torch.tensor(info["final_loss"]))
    assert not torch.equal(model.state_dict()["trunk.conv1.weight"], fp32.state_dict()["trunk.conv1.weight"])
    bf16, info_bf16 = ml.load_metric_model("euclidean", config, lambda: (bench.images, bench.labels), "test-autocast",
                                           progress=False)
    assert not info_bf16["cached"]   # autocast is a training field: not the float32 model's entry
    with pytest.raises(ValueError, match="autocast must be one of"):
        ml.train_metric_model(model, bench.images, bench.labels, ml.config_for_profile("smoke", autocast="fp8", **settings),
                              progress=False)
