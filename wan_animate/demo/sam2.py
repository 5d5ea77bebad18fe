"""A tiny randomly initialised SAM2 video model, saved the way the real one is stored.

`build_tiny_sam2` writes a `transformers` ``Sam2VideoModel`` and its ``Sam2VideoProcessor`` with
``save_pretrained`` (config.json, model.safetensors, processor_config.json), so it loads through
`PersonSegmenter.from_pretrained` exactly as ``facebook/sam2.1-hiera-large`` does.

Sizes: 64 x 64 input; a 4-stage Hiera of 8..64 channels with one block per stage except a second, global
attention block in stage 3 (the first block of each later stage pools, and a pooling block can't be global);
feature maps 16, 8 and 4 pixels. Two sizes are fixed by the model code: the memory encoder's 64 output channels
(the memory cross-attention's key width is hard-coded to 64), and a hidden size above 64 (128 here; with 64,
object pointers are not split into memory-width tokens and the memory concatenation fails). The memory is kept
short (`NUM_MASKMEM`, `MAX_OBJECT_POINTERS`) so tests can see the tracking state being bounded on short clips.

Random weights give arbitrary masks. Two things make them usable: the object-score head always says "the object
is in the frame" (its output layer is zeroed with bias `OBJECT_LOGIT`; otherwise SAM2 blanks the masks of
frames it judges the object absent from), and ``mask_bias`` raises the mask hypernetworks' output bias so that
some of the frame is masked (the mask logits are the hypernetwork output dotted with mostly positive GELU
features), while the prompt still moves the mask.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 64
HIDDEN = 128
NUM_MASKMEM = 3
"""Mask memories: the conditioning frame plus the 2 previous frames."""
MAX_OBJECT_POINTERS = 4
"""Object pointers read from up to 3 previous frames."""
OBJECT_LOGIT = 10.0


def build_tiny_sam2(folder: str | Path, *, mask_bias: float = 0.0) -> Path:
    """Save a tiny random SAM2 video model and its processor (64 x 64 input) to ``folder``.

    Args:
        folder: Output folder.
        mask_bias: Added to the output bias of the mask hypernetworks (about 2 masks a good part of a frame).

    Returns:
        The folder.
    """
    from transformers import Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    folder = Path(folder)
    size = IMAGE_SIZE
    features = [[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]]
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        num_attention_heads=1,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 2, 2],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=features,
        fpn_hidden_size=HIDDEN,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        image_size=size,
        prompt_encoder_config=dict(hidden_size=HIDDEN, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=HIDDEN, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=16),
        num_maskmem=NUM_MASKMEM,
        max_object_pointers_in_encoder=MAX_OBJECT_POINTERS,
        memory_attention_hidden_size=HIDDEN,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=features[-1],
        memory_encoder_hidden_size=HIDDEN,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=HIDDEN,
        memory_fuser_embed_dim=HIDDEN,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    torch.manual_seed(0)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.weight.zero_()
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(OBJECT_LOGIT)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.bias.add_(mask_bias)
    model.save_pretrained(folder)
    square = {"height": size, "width": size}
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=square, mask_size={"height": size // 4, "width": size // 4}),
        video_processor=Sam2VideoVideoProcessor(size=square),
        target_size=size,
    )
    processor.save_pretrained(folder)
    return folder
