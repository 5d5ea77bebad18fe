"""A tiny, randomly initialised Wan2.2-Animate checkpoint in the folder layout of the real diffusers repo.

`Wan-AI/Wan2.2-Animate-14B-Diffusers` is what ``WanAnimatePipeline.save_pretrained`` writes (diffusers'
``scripts/convert_wan_to_diffusers.py``): ``model_index.json`` and one folder per component,

    tokenizer/        T5 tokenizer (UMT5's), tokenizers-backed
    text_encoder/     UMT5EncoderModel, sharded safetensors + index
    vae/              AutoencoderKLWan
    scheduler/        UniPCMultistepScheduler, flow matching, flow_shift 5.0
    image_processor/  CLIPImageProcessor
    image_encoder/    CLIPVisionModel
    transformer/      WanAnimateTransformer3DModel, fp32, sharded safetensors + index

Here every component has the real class and config keys with tiny sizes, so the same loader
(`wan_animate.models.load_pipeline`) reads it, and a whole pipeline call runs on a CPU in seconds. Large
components are sharded like the real ones so the loader's handling of ``*.safetensors.index.json`` is exercised.

Face size: the real motion encoder reads 512 x 512 face crops. Here ``motion_encoder_size`` is 32 and the
pipeline resizes the contract's 512 x 512 crops to it (diffusers logs a "Reshaping face video" warning). Measured
on the 2-core test machine: the 512 x 512 motion encoder runs on every face frame at every step and made an
80-frame, 2-segment, 2-step call at 64 x 64 about 4x slower (17 s instead of 4.4 s).
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 32
"""UMT5 ``d_model`` = the transformer's ``text_dim`` (4096 in the real model)."""
CLIP_DIM = 16
"""CLIP vision ``hidden_size`` = the transformer's ``image_dim`` (1280 in the real model)."""
CLIP_IMAGE_SIZE = 32
MOTION_ENCODER_SIZE = 32
"""Face size the tiny motion encoder reads (512 in the real model; see the module docstring)."""
MAX_SHARD_SIZE = "40KB"
"""Small enough that the transformer and the text encoder are written as several shards plus an index."""

# A small English vocabulary for the Unigram tokenizer; anything else falls back to characters or <unk>.
_WORDS = (
    "a an the person man woman child character people dance dancing dances walk walking run running jump jumping "
    "turn turning wave waving arm arms hand hands leg legs head face body video frame frames motion move moves "
    "moving pose poses camera shot scene background light lighting color colour bright dark high quality low "
    "blurred static still picture detailed realistic cinematic smooth natural in on at of with and or to is are "
    "does doing action actions the is his her their left right up down front back slow fast happy smiling"
).split()


def tiny_transformer_config() -> dict:
    """Config of a tiny `WanAnimateTransformer3DModel` with every part of the real one.

    Two blocks of two 12-dim heads (12 splits into rotary t/h/w parts 4/4/4), image cross-attention projections
    (``added_kv_proj_dim``, as in the real model), one face adapter, and a motion encoder for 32 x 32 faces
    with 4 channels at every scale from 32 x 32 down to 4 x 4.
    """
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        latent_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=CLIP_DIM,
        added_kv_proj_dim=24,
        rope_max_seq_len=1024,
        pos_embed_seq_len=None,
        motion_encoder_channel_sizes={str(2**i): 4 for i in range(2, MOTION_ENCODER_SIZE.bit_length())},
        motion_encoder_size=MOTION_ENCODER_SIZE,
        motion_style_dim=16,
        motion_dim=4,
        motion_encoder_dim=16,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
        motion_encoder_batch_size=8,
    )


def tiny_tokenizer():
    """A T5 (Unigram, tokenizers-backed) tokenizer over a few hundred pieces, with pad 0, eos 1, unk 2 like UMT5."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -5.0) for word in dict.fromkeys(_WORDS)]
    characters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [(char, -10.0) for char in characters] + [(f"▁{char}", -9.0) for char in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        eos_token_id=1,
    )
    return UMT5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLWan

    # The real VAE's spatial (8x) and temporal (4x) compression, with 4 channels instead of 96.
    return AutoencoderKLWan(
        base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    # As diffusers' conversion script builds it for the Animate repo (flow matching, shift 5).
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=5.0
    )


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=CLIP_DIM,
        intermediate_size=32,
        num_hidden_layers=2,  # the pipeline takes the second-to-last hidden state
        num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        projection_dim=16,
    )
    return CLIPVisionModel(config).eval()


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    )


def build_tiny_pipeline(seed: int = 0):
    """The tiny `WanAnimatePipeline` in memory (fp32, eval mode, random weights from ``seed``)."""
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    return WanAnimatePipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(len(tokenizer)),
        vae=_vae(),
        scheduler=_scheduler(),
        image_processor=_image_processor(),
        image_encoder=_image_encoder(),
        transformer=WanAnimateTransformer3DModel(**tiny_transformer_config()).eval(),
    )


def build_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint to ``folder`` (created) in the real repo's layout and return the folder."""
    folder = Path(folder)
    pipeline = build_tiny_pipeline(seed)
    pipeline.save_pretrained(folder, safe_serialization=True)
    # The real transformer (15 shards) and UMT5 (sharded too) come with an index; the VAE and CLIP do not.
    for name in ("transformer", "text_encoder"):
        component = getattr(pipeline, name)
        for stale in (folder / name).glob("*.safetensors"):
            stale.unlink()
        component.save_pretrained(folder / name, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    return folder
