"""Tiny randomly initialised stand-ins for the preprocessing models, saved the way the real ones are stored.

- `build_tiny_detector`: an RT-DETRv2 from a small `transformers` config with COCO's label names, saved with
  ``save_pretrained`` next to its image processor config (what the hub repo holds).
- `build_tiny_pose_onnx`: a small module shaped like mmpose's ViTPose (patch conv k16 s16 p2, position
  embedding with a class slot, pre-norm blocks with a fused qkv, final LayerNorm, deconvolution head with
  BatchNorm), exported with torch's TorchScript ONNX exporter like upstream's file, and saved with one
  external data file per tensor at ``process_checkpoint/pose2d/vitpose_h_wholebody.onnx``.
- `build_foreign_pose_onnx`: another network with ViTPose's input and output shapes, which the torch reader
  cannot map and onnxruntime runs (the pose loader's fallback).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

COCO_FIRST_LABELS = {0: "person", 1: "bicycle", 2: "car"}
"""RT-DETR's contiguous COCO ids; the person class is 0, as in the real checkpoints."""

POSE_FILE = "process_checkpoint/pose2d/vitpose_h_wholebody.onnx"


def build_tiny_detector(folder: str | Path, *, class_logits: dict[str, float] | None = None) -> Path:
    """Save a tiny random RT-DETRv2 and its image processor (64 x 64 input) to ``folder``.

    Args:
        folder: Output folder.
        class_logits: Optional fixed logit per label name (e.g. ``{"person": 5, "car": -20}``): the class
            heads' weights are zeroed and their biases set, so every query scores exactly that.

    Returns:
        The folder.
    """
    from transformers import RTDetrImageProcessor, RTDetrResNetConfig, RTDetrV2Config, RTDetrV2ForObjectDetection

    folder = Path(folder)
    backbone = RTDetrResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic", out_indices=[2, 3, 4]
    )
    config = RTDetrV2Config(
        backbone_config=backbone,
        encoder_in_channels=[16, 32, 64],
        encoder_hidden_dim=16,
        d_model=16,
        decoder_in_channels=[16, 16, 16],
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        decoder_n_points=2,
        num_queries=10,
        num_denoising=0,
        id2label=COCO_FIRST_LABELS,
    )
    torch.manual_seed(0)
    model = RTDetrV2ForObjectDetection(config).eval()
    if class_logits is not None:
        label_ids = {name: index for index, name in COCO_FIRST_LABELS.items()}
        with torch.no_grad():
            for head in [*model.class_embed, *model.model.decoder.class_embed]:
                head.weight.zero_()
                for name, logit in class_logits.items():
                    head.bias[label_ids[name]] = logit
    model.save_pretrained(folder)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


class _Attention(nn.Module):
    """mmpose ViTPose attention: one fused qkv Linear, reshaped to (3, heads, head_dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, -1))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViTPose(nn.Module):
    """mmpose ViTPose (backbone + TopdownHeatmapSimpleHead) with small width and depth, 133 keypoints."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, keypoints: int = 133) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=16, stride=16, padding=2)
        self.pos_embed = nn.Parameter(torch.randn(1, 16 * 12 + 1, dim) * 0.5)
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(depth)])
        self.last_norm = nn.LayerNorm(dim, eps=1e-6)
        self.deconv_layers = nn.Sequential(
            nn.ConvTranspose2d(dim, 256, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.ConvTranspose2d(256, 256, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
        )
        self.final_layer = nn.Conv2d(256, keypoints, kernel_size=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        batch, channels, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        x = self.last_norm(x)
        x = x.permute(0, 2, 1).reshape(batch, channels, height, width)
        return self.final_layer(self.deconv_layers(x))


def _randomise(model: nn.Module) -> None:
    """Non-trivial norms and BatchNorm statistics, so a mix-up of any of them changes the output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        for module in model.modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.weight.normal_(0, 0.05)


def build_tiny_pose_onnx(folder: str | Path, *, opset_version: int = 11, seed: int = 0) -> Path:
    """Export a tiny random ViTPose like upstream's file, weights as one external file per tensor.

    Args:
        folder: Root folder; the model lands at ``folder/process_checkpoint/pose2d/vitpose_h_wholebody.onnx``.
        opset_version: 11 decomposes LayerNorm into ReduceMean/Sub/Pow/...; 17 and later use LayerNormalization.
        seed: Random seed of the weights.

    Returns:
        Path of the ``.onnx`` file. Input (N, 3, 256, 192), output heatmaps (N, 133, 64, 48), dynamic N.
    """
    import onnx

    torch.manual_seed(seed)
    model = TinyViTPose().eval()
    _randomise(model)
    path = Path(folder) / POSE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = path.with_suffix(".export.onnx")
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 256, 192),),
        str(exported),
        dynamo=False,
        opset_version=opset_version,
        input_names=["input_0"],
        output_names=["output_0"],
        dynamic_axes={"input_0": {0: "batch"}, "output_0": {0: "batch"}},
    )
    proto = onnx.load(str(exported))
    exported.unlink()
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=False)
    return path


def build_foreign_pose_onnx(path: str | Path, *, bias: float = 1.0, seed: int = 0) -> Path:
    """A network that is not ViTPose but has its shapes: one stride-4 convolution, (N, 3, 256, 192) -> (N, 133, 64, 48).

    Args:
        path: The ``.onnx`` file to write (weights inside it).
        bias: Added to every heatmap, so the peaks (the keypoint scores) pass the face and skeleton thresholds.
        seed: Random seed of the weights.
    """
    torch.manual_seed(seed)
    net = nn.Conv2d(3, 133, 4, stride=4)
    with torch.no_grad():
        net.weight.mul_(0.1)
        net.bias.fill_(bias)
    torch.onnx.export(
        net, (torch.randn(1, 3, 256, 192),), str(path), dynamo=False, opset_version=11,
        input_names=["input"], dynamic_axes={"input": {0: "n"}},
    )  # fmt: skip
    return Path(path)
