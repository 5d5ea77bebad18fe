"""One segment at a time: which conditioning frames a segment reads, and the pipeline's components run on them.

`WanAnimatePipeline.__call__` generates a clip in segments of 77 frames; every later segment is conditioned on
the last 1 (or 5) frames generated before it (contract: "Size, frame rate, segments"). It does so in one call
that first turns every conditioning frame of the clip into float32 tensors on the GPU and returns the whole
clip at the end. `SegmentModel` runs the same work one segment at a time, from the pipeline's own components
and helpers (``encode_image``, ``prepare_reference_image_latents``, ``prepare_pose_latents``,
``prepare_prev_segment_cond_latents``, ``prepare_latents``, its video processors, the transformer, the scheduler
and the VAE), so that only the current segment's frames are tensors and each segment can be written as soon
as it is decoded. For the same seed it gives the frames of the pipeline call: the random draws (the initial
noise of every segment, and the re-noising of a few-step scheduler) come from the job's generator in the same
order, and the padding of short clips follows the pipeline's (`SegmentPlan`).

The pipeline object stays the container of the weights, LoRA adapters, offload hooks, compiled blocks and
context parallelism: every component is called the way the pipeline calls it, so its hooks run as they do there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from color_matcher.mvgd_matcher import TransferMVGD
from PIL import Image

from .conditioning import Conditioning

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline


@dataclass(frozen=True)
class SegmentPlan:
    """How a clip of ``num_frames`` frames is cut into segments, as `WanAnimatePipeline.__call__` cuts it.

    Segment k reads the frames ``[k * stride, k * stride + segment_frames)`` of the conditioning padded as the
    pipeline pads it: a clip of no more than ``overlap_frames`` frames first holds its last frame up to
    ``overlap_frames + 1`` frames (the pipeline needs more frames than the overlap), then the clip is extended
    by reflection (``pad_video_frames``: 0 1 2 3 2 1 0 1 ...) to whole segments. Every segment after the first
    re-creates the ``overlap_frames`` frames it is conditioned on and contributes the frames after them.
    """

    num_frames: int
    segment_frames: int = 77
    overlap_frames: int = 1

    @property
    def stride(self) -> int:
        """Frames between the starts of two segments."""
        return self.segment_frames - self.overlap_frames

    @property
    def conditioning_frames(self) -> int:
        """Frames of the conditioning after the short-clip hold (at least ``overlap_frames + 1``)."""
        return max(self.num_frames, self.overlap_frames + 1)

    @property
    def num_segments(self) -> int:
        """Segments the pipeline generates: enough for ``overlap + k * stride >= conditioning_frames``."""
        return -(-(self.conditioning_frames - self.overlap_frames) // self.stride)

    def source_indices(self, index: int) -> np.ndarray:
        """The conditioning frame each of segment ``index``'s ``segment_frames`` frames is read from."""
        positions = index * self.stride + np.arange(self.segment_frames)
        period = 2 * (self.conditioning_frames - 1)
        folded = positions % period
        reflected = np.where(folded < self.conditioning_frames, folded, period - folded)
        return np.minimum(reflected, self.num_frames - 1)  # frames of the short-clip hold repeat the last one

    def output_range(self, index: int) -> tuple[int, int]:
        """The output frames ``[start, end)`` segment ``index`` contributes, cut to the clip."""
        start = 0 if index == 0 else index * self.stride + self.overlap_frames
        return start, min(index * self.stride + self.segment_frames, self.num_frames)

    def frames_done(self, segments_done: int) -> int:
        """Output frames finished after the first ``segments_done`` segments."""
        return self.output_range(segments_done - 1)[1] if segments_done > 0 else 0


@dataclass
class SegmentInputs:
    """One segment's conditioning frames as the pipeline's video processors make them (float32, on the CPU).

    Attributes:
        index: The segment.
        pose: ``(1, 3, T, H, W)`` skeleton frames in [-1, 1].
        face: ``(1, 3, T, S, S)`` face crops in [-1, 1] at the motion encoder's size S.
        background: Replacement: ``(1, 3, T, H, W)`` background frames in [-1, 1].
        mask: Replacement: ``(1, 1, T, H, W)`` mask in {0, 1}.
    """

    index: int
    pose: torch.Tensor
    face: torch.Tensor
    background: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class JobLatents:
    """What every segment of a job shares: computed once per job, kept on the device."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    image_embeds: torch.Tensor
    reference_image_latents: torch.Tensor


@dataclass
class EncodedSegment:
    """One segment's conditioning in latent space, on the device, ready for the denoising steps."""

    pose_latents: torch.Tensor
    face: torch.Tensor
    reference_latents: torch.Tensor


class SegmentModel:
    """The pipeline's components run on one segment at a time for one job.

    Args:
        pipeline: The loaded `WanAnimatePipeline` (weights, adapters, hooks, scheduler for this job).
        conditioning: The job's inputs (arrays or `VideoFrames`).
        plan: The job's segments.
        num_inference_steps: Denoising steps per segment.
        guidance_scale: Classifier-free guidance; above 1 each step runs a second pass with a blank face.
        generator: The job's generator (CPU): every random draw of the job comes from it.
    """

    def __init__(
        self,
        pipeline: WanAnimatePipeline,
        conditioning: Conditioning,
        plan: SegmentPlan,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator,
    ) -> None:
        self.pipeline = pipeline
        self.conditioning = conditioning
        self.plan = plan
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.generator = generator
        self.device = pipeline._execution_device
        self.transformer_dtype = pipeline.transformer.dtype

    # -- once per job ----------------------------------------------------------------------------------

    def prepare_job(self, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None) -> JobLatents:
        """Image embeddings (CLIP) and the reference image's latents (VAE); the prompt embeddings in the
        transformer's dtype."""
        pipe = self.pipeline
        height, width = self.conditioning.height, self.conditioning.width
        image = Image.fromarray(self.conditioning.reference_image)
        pixels = pipe.vae_image_processor.preprocess(image, height=height, width=width, resize_mode="fill")
        reference_image_latents = pipe.prepare_reference_image_latents(
            pixels.to(self.device, dtype=torch.float32), 1, generator=self.generator, device=self.device
        )
        return JobLatents(
            prompt_embeds=prompt_embeds.to(self.transformer_dtype),
            negative_prompt_embeds=None if negative_prompt_embeds is None else negative_prompt_embeds.to(self.transformer_dtype),
            image_embeds=pipe.encode_image(image, self.device).to(self.transformer_dtype),
            reference_image_latents=reference_image_latents,
        )

    # -- per segment -----------------------------------------------------------------------------------

    def load_inputs(self, index: int) -> SegmentInputs:
        """Segment ``index``'s conditioning frames, decoded and preprocessed on the CPU (any thread)."""
        pipe = self.pipeline
        conditioning = self.conditioning
        height, width = conditioning.height, conditioning.width
        frames = self.plan.source_indices(index)
        face_size = pipe.transformer.config.motion_encoder_size
        inputs = SegmentInputs(
            index=index,
            pose=pipe.video_processor.preprocess_video(_images(conditioning.pose_frames[frames]), height=height, width=width),
            face=pipe.video_processor.preprocess_video(_images(conditioning.face_frames[frames]), height=face_size, width=face_size),
        )
        if conditioning.mode == "replace":
            inputs.background = pipe.video_processor.preprocess_video(
                _images(conditioning.background_frames[frames]), height=height, width=width
            )
            inputs.mask = pipe.video_processor_for_mask.preprocess_video(
                _images(conditioning.mask_frames[frames] * 255), height=height, width=width
            )
        return inputs

    def encode(self, job: JobLatents, inputs: SegmentInputs, previous: torch.Tensor | None) -> EncodedSegment:
        """VAE-encode the segment's skeleton frames and its conditioning video: the previous segment's last
        frames (``previous``, as decoded) then zeros in Animation, or the background with the mask in Replacement."""
        pipe = self.pipeline
        device = self.device
        start = inputs.index * self.plan.stride
        pose_latents = pipe.prepare_pose_latents(inputs.pose.to(device), 1, generator=self.generator, device=device)
        replace = self.conditioning.mode == "replace"
        condition_latents = pipe.prepare_prev_segment_cond_latents(
            previous,
            background_video=inputs.background.to(device) if replace else None,
            mask_video=inputs.mask.to(device) if replace else None,
            batch_size=1,
            segment_frame_length=self.plan.segment_frames,
            start_frame=start,
            height=self.conditioning.height,
            width=self.conditioning.width,
            prev_segment_cond_frames=self.plan.overlap_frames,
            task=self.conditioning.mode,
            generator=self.generator,
            device=device,
        )
        return EncodedSegment(
            pose_latents=pose_latents.to(self.transformer_dtype),
            face=inputs.face.to(device, self.transformer_dtype),
            reference_latents=torch.cat([job.reference_image_latents, condition_latents], dim=2),
        )

    def denoise(self, job: JobLatents, segment: EncodedSegment, on_step: Callable[[int], None]) -> torch.Tensor:
        """The denoising steps of one segment from fresh noise; ``on_step(i)`` after step ``i``.

        The noise is drawn here, before the steps, from the job's generator: the pipeline draws it first in a
        segment and its encodes draw nothing (``argmax`` latents), so the order of draws is the pipeline's.
        """
        pipe = self.pipeline
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        latents = pipe.prepare_latents(
            1,
            num_channels_latents=pipe.vae.config.z_dim,
            height=self.conditioning.height,
            width=self.conditioning.width,
            num_frames=self.plan.segment_frames,
            dtype=torch.float32,
            device=self.device,
            generator=self.generator,
        )
        # The unconditional pass sees a blank face (all pixels -1), as the pipeline's; made once per segment.
        blank_face = torch.full_like(segment.face, -1) if self.guidance_scale > 1 else None
        for step, timestep in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents, segment.reference_latents], dim=1).to(self.transformer_dtype)
            inputs = dict(
                hidden_states=model_input,
                timestep=timestep.expand(latents.shape[0]),
                encoder_hidden_states_image=job.image_embeds,
                pose_hidden_states=segment.pose_latents,
                return_dict=False,
            )
            with pipe.transformer.cache_context("cond"):
                noise_pred = pipe.transformer(
                    **inputs, encoder_hidden_states=job.prompt_embeds, face_pixel_values=segment.face
                )[0]
            if blank_face is not None:
                with pipe.transformer.cache_context("uncond"):
                    noise_uncond = pipe.transformer(
                        **inputs, encoder_hidden_states=job.negative_prompt_embeds, face_pixel_values=blank_face
                    )[0]
                noise_pred = noise_uncond + self.guidance_scale * (noise_pred - noise_uncond)
            latents = scheduler.step(noise_pred, timestep, latents, return_dict=False)[0]
            on_step(step)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The segment's frames ``(1, 3, T, H, W)`` in [-1, 1] as the VAE decodes them (its dtype, on the device).

        The first latent frame is the reference image's and is left out, as the pipeline does.
        """
        vae = self.pipeline.vae
        latents = latents.to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        recip_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        return vae.decode(latents[:, :, 1:] / recip_std + mean, return_dict=False)[0]

    def output_frames(self, index: int, video: torch.Tensor) -> np.ndarray:
        """The frames segment ``index`` adds to the clip, as ``(T, H, W, 3)`` uint8 RGB.

        The overlap it re-created is dropped and the clip's padding cut off; the conversion is the pipeline's
        ``output_type="np"`` (its video processor's denormalisation) rounded to 8 bits, done on the device so
        only the uint8 frames are copied to the host.
        """
        start, end = self.plan.output_range(index)
        first = start - index * self.plan.stride
        kept = video[:, :, first : first + end - start]
        frames = self.pipeline.video_processor.postprocess_video(kept, output_type="pt")[0]  # (T, 3, H, W) in [0, 1]
        # In place: at 720p each float copy of a segment is ~0.85 GB of GPU memory.
        frames = frames.float().mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return frames.permute(0, 2, 3, 1).cpu().numpy()


def _images(frames: np.ndarray) -> list[Image.Image]:
    """Frames as the PIL images the pipeline's video processors take (RGB, or L for a mask)."""
    return [Image.fromarray(frame) for frame in frames]


def match_colors(video: torch.Tensor, reference: torch.Tensor, overlap_frames: int) -> torch.Tensor:
    """Correct a segment's colours so its first frames match the frames it was conditioned on.

    A segment re-creates the ``overlap_frames`` frames it was conditioned on (``reference``, the previous
    segment's last frames as corrected): the same instants, so any difference in their colours is drift. A
    colour transfer (Monge-Kantorovich linearisation, from `color-matcher`) is fitted from the re-created frames
    to ``reference`` and that one affine map is applied to the whole segment, so colour changes inside the
    segment are kept while the jump at its start goes. The result is clamped to the VAE's range.

    Args:
        video: ``(1, 3, T, H, W)`` decoded segment in [-1, 1], its first ``overlap_frames`` re-creating
            ``reference``.
        reference: ``(1, 3, overlap_frames, H, W)`` the frames the segment was conditioned on.
        overlap_frames: How many frames the two share.

    Returns:
        The corrected segment, same shape, dtype and device.
    """

    def pixels(frames: torch.Tensor) -> np.ndarray:  # (N, 1, 3) in 0..255: the matcher takes images
        return ((frames[0].double().permute(1, 2, 3, 0).reshape(-1, 1, 3) + 1) * 127.5).cpu().numpy()

    matcher = TransferMVGD(method="mkl")
    matcher.multivar_transfer(src=pixels(video[:, :, :overlap_frames]), ref=pixels(reference))
    # y = M (x - mu_src) + mu_ref in 0..255; the same map in [-1, 1]: y' = M x' + ((mu_ref - M mu_src) / 127.5 + M 1 - 1)
    matrix = torch.as_tensor(matcher.transfer_mat, dtype=torch.float64)
    shift = torch.as_tensor((matcher.mu_z - matcher.transfer_mat @ matcher.mu_r)[:, 0] / 127.5, dtype=torch.float64)
    shift = shift + matrix.sum(dim=1) - 1
    matrix, shift = matrix.to(video.device, torch.float32), shift.to(video.device, torch.float32)
    corrected = torch.einsum("ij,bjthw->bithw", matrix, video.float()) + shift.view(1, 3, 1, 1, 1)
    return corrected.clamp(-1, 1).to(video.dtype)


__all__ = ["EncodedSegment", "JobLatents", "SegmentInputs", "SegmentModel", "SegmentPlan", "match_colors"]
