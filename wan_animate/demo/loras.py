"""Tiny random LoRAs for the tiny transformer, in the file formats of the real ones."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_relighting_lora(checkpoint: Path, path: Path) -> Path:
    """A random relighting LoRA for the tiny transformer, in upstream's file format (``relighting_lora.ckpt``:
    PEFT factors under original Wan names, rank 128), so Replacement runs without the hub's file."""
    from diffusers import WanAnimateTransformer3DModel

    from ..lora import BLOCK_MODULE_MAP, RELIGHT_RANK

    transformer = WanAnimateTransformer3DModel.from_pretrained(Path(checkpoint) / "transformer")
    generator = torch.Generator().manual_seed(3)
    state_dict = {}
    for block in range(len(transformer.blocks)):
        for original, name in BLOCK_MODULE_MAP.items():
            try:
                linear = transformer.get_submodule(f"blocks.{block}.{name}")
            except AttributeError:
                continue
            state_dict[f"blocks.{block}.{original}.lora_A.weight"] = torch.randn(RELIGHT_RANK, linear.in_features, generator=generator) * 0.02
            state_dict[f"blocks.{block}.{original}.lora_B.weight"] = torch.randn(linear.out_features, RELIGHT_RANK, generator=generator) * 0.02
    torch.save({"state_dict": state_dict}, path)
    return Path(path)


def build_tiny_fast_lora(checkpoint: Path, path: Path, rank: int = 4) -> Path:
    """A random rank-4 LoRA in diffusers' format on every attention projection: the tiny stand-in for a
    few-step LoRA, so the fast preset and drafts load and switch a real adapter."""
    from diffusers import WanAnimateTransformer3DModel
    from safetensors.torch import save_file

    transformer = WanAnimateTransformer3DModel.from_pretrained(Path(checkpoint) / "transformer")
    generator = torch.Generator().manual_seed(4)
    state_dict = {}
    for block in range(len(transformer.blocks)):
        for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            linear = transformer.get_submodule(f"blocks.{block}.{name}")
            prefix = f"transformer.blocks.{block}.{name}"
            state_dict[f"{prefix}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=generator) * 0.05
            state_dict[f"{prefix}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.05
    save_file(state_dict, str(path))
    return Path(path)
