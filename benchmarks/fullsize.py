"""Full-size Wan2.2-Animate-14B pipeline with random weights, built straight on the GPU, for benchmarks.

The real checkpoint (``Wan-AI/Wan2.2-Animate-14B-Diffusers``) cannot be downloaded on the benchmark machine,
and the cost of a step depends only on the shapes, not on the weight values. So every component is
constructed from the real configs below, on the GPU, in the dtype the real pipeline uses, with random
(never zero) weights. Building takes seconds instead of the minutes that loading 70 GB would.

Run as a script it builds the pipeline, reports sizes and build time, and checks one transformer forward
at the given resolution (no NaN):

    python benchmarks/fullsize.py --resolution 720p
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

# Transformer config of Wan-AI/Wan2.2-Animate-14B-Diffusers (diffusers' conversion script for
# "Wan2.2-Animate-14B"; dims match upstream wan/configs/wan_animate_14B.py: dim 5120 = 40 heads x 128,
# 40 layers, ffn 13824). `added_kv_proj_dim` is NOT the class default: the image cross-attention
# projections (k_img/v_img upstream) exist in the real model, so it must be set.
TRANSFORMER_CONFIG: dict = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "latent_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
    "motion_encoder_size": 512,
    "motion_style_dim": 512,
    "motion_dim": 20,
    "motion_encoder_dim": 512,
    "face_encoder_hidden_dim": 1024,
    "face_encoder_num_heads": 4,
    "inject_face_latents_blocks": 5,
    "motion_encoder_batch_size": 8,
}

# UMT5-XXL encoder (google/umt5-xxl; upstream models_t5_umt5-xxl-enc-bf16).
UMT5_CONFIG: dict = {
    "d_model": 4096,
    "num_layers": 24,
    "d_ff": 10240,
    "num_heads": 64,
    "d_kv": 64,
    "vocab_size": 256384,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "is_encoder_decoder": False,
    "use_cache": False,
}

# CLIP ViT-H/14 vision tower (open-clip xlm-roberta-large-vit-huge-14 upstream).
CLIP_VISION_CONFIG: dict = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "intermediate_size": 5120,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}

# Wan's UniPC flow-matching scheduler, shift 5 (contract default).
SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "solver_order": 2,
}

RESOLUTIONS: dict[str, tuple[int, int]] = {"480p": (480, 832), "720p": (720, 1280)}
"""Output (height, width) of the contract's landscape sizes."""

SEGMENT_FRAMES = 77
TEXT_TOKENS = 512
CLIP_TOKENS = 257
FACE_SIZE = 512


@contextmanager
def _default_device_dtype(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Construct tensors directly on ``device`` in ``dtype`` (no CPU copy, no fp32 detour)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def randomize_zeros_(module: torch.nn.Module, std: float = 0.02) -> None:
    """Replace every all-zero parameter (biases, zero-initialised tables) by small random values.

    Timing and correctness checks must never run on zeros (they hide unwritten outputs and can run faster
    than real data); the modules' own initialisers already give random values everywhere else.
    """
    for parameter in module.parameters():
        if parameter.numel() and not parameter.float().abs().amax().item():
            parameter.normal_(0.0, std)


def _keep_fp32_(model: torch.nn.Module, patterns: list[str] | None) -> None:
    """Upcast the parameters diffusers keeps in fp32 when loading in bf16 (`_keep_in_fp32_modules`)."""
    for name, parameter in model.named_parameters():
        if patterns and any(p in name.split(".") for p in patterns):
            parameter.data = parameter.data.float()


def build_transformer(
    device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> "torch.nn.Module":
    """The 17.3B-parameter Animate transformer, random weights, on ``device`` (same seed, same weights)."""
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    with _default_device_dtype(torch.device(device), dtype):
        model = WanAnimateTransformer3DModel(**TRANSFORMER_CONFIG)
    _keep_fp32_(model, model._keep_in_fp32_modules)
    randomize_zeros_(model)
    return model.eval().requires_grad_(False)


def build_text_encoder(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 1):
    """UMT5-XXL encoder (5.7B parameters), random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    with _default_device_dtype(torch.device(device), dtype):
        model = UMT5EncoderModel(UMT5Config(**UMT5_CONFIG))
    randomize_zeros_(model)
    return model.eval().requires_grad_(False)


def build_image_encoder(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 2):
    """CLIP ViT-H/14 vision tower (0.63B parameters), random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    with _default_device_dtype(torch.device(device), dtype):
        model = CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION_CONFIG))
    randomize_zeros_(model)
    return model.eval().requires_grad_(False)


def build_vae(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32, seed: int = 3):
    """Wan2.1 VAE (AutoencoderKLWan default config, 127M parameters), random weights, fp32 by default."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    with _default_device_dtype(torch.device(device), dtype):
        model = AutoencoderKLWan()
    randomize_zeros_(model)
    return model.eval().requires_grad_(False)


def build_tokenizer(max_length: int = TEXT_TOKENS):
    """A tiny word-level tokenizer: prompts are padded to ``max_length`` anyway, so cost is unchanged."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(997)}}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def build_image_processor():
    """CLIP preprocessing at 224 x 224 with the OpenAI mean/std (the processor's defaults)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})


def build_scheduler():
    """UniPC flow-matching scheduler with shift 5."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)


def build_pipeline(
    device: str | torch.device = "cuda",
    transformer_dtype: torch.dtype = torch.bfloat16,
    vae_dtype: torch.dtype = torch.float32,
    components_device: str | torch.device | None = None,
):
    """The whole `WanAnimatePipeline` at full size with random weights.

    Args:
        device: Where the transformer is built.
        transformer_dtype: Dtype of the transformer, text and image encoders (bf16 like the real pipeline).
        vae_dtype: Dtype of the VAE (fp32, as diffusers' example upcasts it).
        components_device: Where the encoders and VAE are built; defaults to ``device``. Building on the
            CPU lets memory modes that offload start from the CPU like a real load does.
    """
    from diffusers import WanAnimatePipeline

    components_device = components_device or device
    return WanAnimatePipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(components_device, transformer_dtype),
        vae=build_vae(components_device, vae_dtype),
        scheduler=build_scheduler(),
        image_processor=build_image_processor(),
        image_encoder=build_image_encoder(components_device, transformer_dtype),
        transformer=build_transformer(device, transformer_dtype),
    )


@dataclass
class SegmentInputs:
    """Transformer inputs of one 77-frame segment (what the pipeline feeds each denoising step)."""

    hidden_states: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    encoder_hidden_states_image: torch.Tensor
    pose_hidden_states: torch.Tensor
    face_pixel_values: torch.Tensor

    def kwargs(self) -> dict:
        """Keyword arguments of `WanAnimateTransformer3DModel.forward`."""
        return {
            "hidden_states": self.hidden_states,
            "timestep": self.timestep,
            "encoder_hidden_states": self.encoder_hidden_states,
            "encoder_hidden_states_image": self.encoder_hidden_states_image,
            "pose_hidden_states": self.pose_hidden_states,
            "face_pixel_values": self.face_pixel_values,
            "return_dict": False,
        }


def shrink_for_smoke() -> None:
    """Tiny models of the same architecture, 64-pixel frames and 5-frame segments: a script's ``--smoke`` run checks
    its code paths on the CPU in seconds (timings and memory meaningless)."""
    global SEGMENT_FRAMES
    TRANSFORMER_CONFIG.update(
        num_attention_heads=2, num_layers=5, ffn_dim=256, added_kv_proj_dim=256, text_dim=64, image_dim=32
    )
    UMT5_CONFIG.update(d_model=64, num_layers=2, d_ff=128, num_heads=2, d_kv=32, vocab_size=1000)
    CLIP_VISION_CONFIG.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    RESOLUTIONS.update({"480p": (64, 64), "720p": (64, 96)})
    SEGMENT_FRAMES = 5


def latent_shape(resolution: str, frames: int | None = None) -> tuple[int, int, int]:
    """(latent frames incl. the reference frame, latent height, latent width) of one segment."""
    frames = frames or SEGMENT_FRAMES
    height, width = RESOLUTIONS[resolution]
    return (frames - 1) // 4 + 1 + 1, height // 8, width // 8


def tokens_per_step(resolution: str) -> int:
    """Video tokens the transformer attends over (2 x 2 patches of every latent frame)."""
    frames, lat_h, lat_w = latent_shape(resolution)
    return frames * (lat_h // 2) * (lat_w // 2)


def transformer_flops(resolution: str, config: dict = TRANSFORMER_CONFIG) -> dict[str, float]:
    """Matmul FLOPs of one denoising step (forward), split into linear layers and attention."""
    n = tokens_per_step(resolution)
    dim, ffn, layers = (
        config["num_attention_heads"] * config["attention_head_dim"],
        config["ffn_dim"],
        config["num_layers"],
    )
    context = TEXT_TOKENS + CLIP_TOKENS
    per_token_linear = 4 * dim * dim + 2 * dim * dim + 2 * dim * ffn  # self-attn qkvo, cross q/o, ffn
    linear = 2 * n * per_token_linear * layers + 2 * context * 4 * dim * dim * layers  # + cross k/v (text, image)
    self_attention = 4 * n * n * dim * layers
    cross_attention = 4 * n * context * dim * layers
    return {"linear": float(linear), "self_attention": float(self_attention), "cross_attention": float(cross_attention)}


def make_segment_inputs(
    resolution: str,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    timestep: float = 999.0,
) -> SegmentInputs:
    """Random transformer inputs for one segment at ``resolution`` (seeded, so every variant sees the same)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    frames, lat_h, lat_w = latent_shape(resolution)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    return SegmentInputs(
        hidden_states=randn(1, TRANSFORMER_CONFIG["in_channels"], frames, lat_h, lat_w),
        timestep=torch.tensor([timestep], device=device),
        encoder_hidden_states=randn(1, TEXT_TOKENS, TRANSFORMER_CONFIG["text_dim"]),
        encoder_hidden_states_image=randn(1, CLIP_TOKENS, TRANSFORMER_CONFIG["image_dim"]),
        pose_hidden_states=randn(1, TRANSFORMER_CONFIG["latent_channels"], frames - 1, lat_h, lat_w),
        face_pixel_values=randn(1, 3, SEGMENT_FRAMES, FACE_SIZE, FACE_SIZE).clamp(-1, 1),
    )


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    """Build the pipeline, report its size, and check one transformer forward at the given resolution."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="480p")
    args = parser.parse_args()

    started = time.perf_counter()
    pipeline = build_pipeline()
    torch.cuda.synchronize()
    build_seconds = time.perf_counter() - started
    inputs = make_segment_inputs(args.resolution)
    with torch.inference_mode():
        output = pipeline.transformer(**inputs.kwargs())[0]
    torch.cuda.synchronize()
    report = {
        "build_seconds": round(build_seconds, 2),
        "parameters_billion": {
            name: round(parameter_count(getattr(pipeline, name)) / 1e9, 3)
            for name in ("transformer", "text_encoder", "image_encoder", "vae")
        },
        "gpu_allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
        "tokens_per_step": tokens_per_step(args.resolution),
        "flops_per_step_tera": {k: round(v / 1e12, 1) for k, v in transformer_flops(args.resolution).items()},
        "output_shape": list(output.shape),
        "output_finite": bool(torch.isfinite(output).all()),
        "output_std": float(output.float().std()),
    }
    print(json.dumps(report, indent=2))
    if not report["output_finite"] or not math.isfinite(report["output_std"]):
        raise SystemExit("transformer output is not finite")


if __name__ == "__main__":
    main()
