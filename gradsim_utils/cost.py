"""Work per image, counted, and GPU time at the paper profile's sizes (issue 18, point 6).

The work of one pass is counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device
(shapes only, no arithmetic): convolutions and matrix products, 2 FLOPs per multiply-add, e.g.

    2 k^2 c_in c_out H W

for a k x k convolution from c_in to c_out channels with an H x W output, in the forward pass; the
backward pass the step's mode runs (``memory.run_pass``) is counted the same way (about twice the
forward when weights and inputs both get gradients). Elementwise layers (BatchNorm, ReLU) are not
counted. A chapter's work is the work per image times the images its step passes
(``memory.Step.passed``), and its time on one GPU

    seconds = FLOPs / (GPU_FP32_TFLOPS * 1e12)

The rate is an assumption, not a measurement (no GPU here); ``benchmarks/bench_memory.py`` measures
this machine's CPU rate the same way (counted FLOPs / measured seconds).
"""
from __future__ import annotations

import copy
import time
import weakref

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from . import memory

__all__ = ["GPU_FP32_TFLOPS", "GPU_FP16_TFLOPS", "pass_flops", "measured_tflops", "LiveBytes", "estimate", "SD15_UNET",
           "SD15_VAE", "SD15_TEXT", "diffusion"]

#: Assumed sustained rate of one GPU in float32 with TF32 off (the package's verdicts assume IEEE
#: float32 on CUDA), in TFLOP/s: half the 19.5 TFLOP/s float32 peak of an NVIDIA A100 (an assumed
#: efficiency). Not measured: no GPU was available. Another card scales every time by the ratio of
#: its sustained rate to this one (an H100 SXM's float32 peak is 67 TFLOP/s).
GPU_FP32_TFLOPS = 10.0
#: Assumed sustained rate in float16 on tensor cores (chapter 1's Stable Diffusion), in TFLOP/s:
#: about a third of the A100's 312 TFLOP/s float16 tensor-core peak (an assumed efficiency). Not measured.
GPU_FP16_TFLOPS = 100.0


def pass_flops(model: nn.Module, image_size: int, mode: str, layer: str | None = None) -> int:
    """FLOPs per image of one ``mode`` pass (``memory.run_pass``, with its backward) over a
    ``image_size`` px image, counted on a meta copy of ``model`` (the model itself is not moved)."""
    memory.check_mode(mode, layer)
    meta = model if next(model.parameters()).is_meta else copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter:
        memory.run_pass(meta, torch.zeros(1, 3, image_size, image_size, device="meta"), mode, layer, backward=True)
    return counter.get_total_flops()


def measured_tflops(model: nn.Module, image_size: int, mode: str = "forward", layer: str | None = None,
                    batch_size: int = 8, repeats: int = 3) -> float:
    """This machine's rate on ``model``'s device, in TFLOP/s: ``pass_flops`` x ``batch_size`` over
    the fastest of ``repeats`` timed passes of a batch (``memory.run_pass`` with its backward, after
    a one-image warm-up)."""
    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(next(model.parameters()).device)
    memory.run_pass(model, x[:1], mode, layer, backward=True)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        memory.run_pass(model, x, mode, layer, backward=True)
        seconds.append(time.perf_counter() - start)
    return pass_flops(model, image_size, mode, layer) * batch_size / min(seconds) / 1e12


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors that operations make while the mode is on (``peak``),
    and what is still held at the end (``now``). Each storage is counted once, from the first
    tensor that shows it until the last tensor on it is freed; inputs, parameters and buffers made
    before are not counted. Works on the meta device (sizes only), so a network's activation peak
    is read without running it."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._bytes: dict[int, int] = {}
        self._refs: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.now -= self._bytes.pop(key)
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._bytes:
                    self._bytes[key], self._refs[key] = storage.nbytes(), 0
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self._refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def estimate(steps: list[memory.Step], nets: dict | None = None) -> pd.DataFrame:
    """One row per step (the order of ``memory.estimate``): GFLOP per image, TFLOP in the chapter
    (per image x ``step.passed``) and seconds on one GPU at ``GPU_FP32_TFLOPS``. ``nets``: as in
    ``memory.estimate`` (the models are counted on meta copies and left as they are)."""
    per_image, nets = {}, memory.built_models(steps, nets)
    rows = []
    for step in steps:
        key = (step.model, step.base_width, step.mode, step.layer, step.image_size)
        if key not in per_image:
            per_image[key] = pass_flops(nets[step.model, step.base_width], step.image_size, step.mode, step.layer)
        tflop = per_image[key] * step.passed / 1e12
        rows.append({"chapter": step.chapter, "step": step.what, "model": step.model, "images": step.passed,
                     "gflop_per_image": per_image[key] / 1e9, "tflop": tflop,
                     "gpu_seconds": tflop / GPU_FP32_TFLOPS})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# chapter 1: Stable Diffusion v1.5 in float16

# Stable Diffusion v1.5's published configs (stable-diffusion-v1-5/stable-diffusion-v1-5 on the
# Hugging Face hub: unet/config.json, vae/config.json, text_encoder/config.json), the fields that
# differ from the libraries' defaults; built with random weights (no download).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


class _FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as a fused kernel (no score matrix held), as CUDA's flash
    and memory-efficient kernels run it; on the meta device PyTorch would take the math path."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None:
            q, k, v = args[:3]
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False), scale=kwargs.get("scale"))[0]
        return func(*args, **kwargs)


def _forward_cost(run) -> tuple[int, int]:
    """(FLOPs, activation peak in bytes) of ``run()`` on meta tensors, without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    with torch.no_grad(), _FusedAttention(), LiveBytes() as live:
        run()
    return counter.get_total_flops(), live.peak


def diffusion(num_inference_steps: int, image_size: int = 512, batch_size: int = 4, guidance: bool = True,
              n_images: int = 1) -> pd.DataFrame:
    """Chapter 1's work and float16 GPU memory, one row per network of the pipeline.

    Per image: the text encoder on one prompt (twice with classifier-free guidance: the prompt and
    the empty prompt), ``num_inference_steps`` UNet passes on the image_size/8 latent (twice with
    guidance) and one VAE decode. GPU bytes of a batch: all three networks' parameters (2 bytes
    each) plus the network's activation peak (``LiveBytes``, attention fused) at the batch it runs
    (UNet: 2 x ``batch_size`` with guidance; text encoder and VAE decoder: as the pipeline calls them;
    ``parameters_m``: the network's parameters in millions, the VAE's encoder included).
    Seconds at ``GPU_FP16_TFLOPS``. Counted on the meta device: nothing is computed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET).half()
        vae = AutoencoderKL(**SD15_VAE).half()
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).half()
    params = sum(p.numel() * 2 for net in (unet, vae, text) for p in net.parameters())
    copies = 2 if guidance else 1
    side = image_size // 8
    half = dict(device="meta", dtype=torch.float16)
    unet_batch = copies * batch_size
    tokens = torch.zeros(unet_batch, 77, dtype=torch.long, device="meta")
    embeddings = torch.zeros(unet_batch, 77, SD15_UNET["cross_attention_dim"], **half)
    latents = torch.zeros(unet_batch, SD15_UNET["in_channels"], side, side, **half)
    runs = {"text encoder": (text, lambda: text(tokens), unet_batch, copies),
            "UNet": (unet, lambda: unet(latents, torch.tensor(999), embeddings), unet_batch,
                     copies * num_inference_steps),
            "VAE (decode)": (vae, lambda: vae.decode(latents[:batch_size]), batch_size, 1)}
    rows = []
    for name, (net, run, batch, per_image) in runs.items():
        flops, peak = _forward_cost(run)
        tflop = flops / batch * per_image * n_images / 1e12
        rows.append({"network": name, "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
                     "batch": batch, "passes_per_image": per_image,
                     "gflop_per_pass": flops / batch / 1e9, "tflop": tflop, "gpu_seconds": tflop / GPU_FP16_TFLOPS,
                     "gpu_gib": (params + peak) / memory.GIB})
    return pd.DataFrame(rows)
