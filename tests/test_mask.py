"""Replacement masks: keypoint prompts, SAM2 tracking through the tiny model, dilation, blockify, background."""

from __future__ import annotations

from fnmatch import fnmatch

import numpy as np
import pytest
import torch

from wan_animate.demo.sam2 import MAX_OBJECT_POINTERS, NUM_MASKMEM, build_tiny_sam2
from wan_animate.errors import WanAnimateError
from wan_animate.preprocess.mask import (
    DEFAULT_SAM2,
    PROMPT_INDICES,
    SAM2_FILES,
    PersonSegmenter,
    PointPrompt,
    background_frame,
    background_frames,
    blockify_mask,
    dilate_mask,
    keypoint_prompts,
    mask_coverage,
    mask_overlay,
    mask_overlay_frames,
    refine_masks,
    require_mask,
)

H, W = 48, 40


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's many small ops are much slower with 2 threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sam2_folder(tmp_path_factory):
    return build_tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="module")
def segmenter(sam2_folder):
    return PersonSegmenter.from_pretrained(sam2_folder, device="cpu")


def clip(count: int) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, H, W, 3), dtype=np.uint8)


class Spy:
    """Records every SAM2 step: frame, direction, and how much of the session's state is held after it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.steps: list[tuple[int, bool]] = []
        self.pixel_frames_held: list[int] = []
        self.tracked_states_held: list[int] = []
        self.session = None
        self.handle = model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output) -> None:
        self.session = kwargs["inference_session"]
        self.steps.append((kwargs["frame_idx"], bool(kwargs.get("reverse", False))))
        self.pixel_frames_held.append(len(self.session.processed_frames))
        self.tracked_states_held.append(self._tracked_states())

    def _tracked_states(self) -> int:
        return sum(len(outputs["non_cond_frame_outputs"]) for outputs in self.session.output_dict_per_obj.values())

    def __enter__(self) -> "Spy":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# -- keypoint prompts ---------------------------------------------------------------------------------


def test_prompt_points_are_the_contracts_body_points():
    # Nose, Neck, RShoulder, LShoulder, RHip, LHip, RAnkle, LAnkle in the 20-point body order.
    assert PROMPT_INDICES == (0, 1, 2, 5, 8, 11, 10, 13)


def test_keypoint_prompts_drop_low_score_outside_and_missing_points():
    body = np.zeros((1, 20, 3))
    body[0, :] = (10.0, 10.0, 0.9)
    body[0, 0] = (12.0, 5.0, 0.3)  # Nose: low score
    body[0, 1] = (-1.0, 5.0, 0.9)  # Neck: left of the frame
    body[0, 2] = (W, 5.0, 0.9)  # RShoulder: x == W is past the last column
    body[0, 5] = (5.0, H, 0.9)  # LShoulder: below the frame
    body[0, 8] = (np.nan, np.nan, 0.9)  # RHip: missing
    body[0, 11] = (20.0, 30.0, 0.5)  # LHip: score exactly at the threshold is kept
    body[0, 10] = (W - 0.5, H - 0.5, 0.9)  # RAnkle: inside, at the bottom-right edge
    body[0, 13] = (0.0, 0.0, 0.9)  # LAnkle: inside, top-left corner
    body[0, 3] = (7.0, 7.0, 1.0)  # RElbow: confident, but not a prompt point

    prompts = keypoint_prompts(body, (H, W))

    assert prompts == [
        PointPrompt(0, 20.0, 30.0, True),
        PointPrompt(0, W - 0.5, H - 0.5, True),
        PointPrompt(0, 0.0, 0.0, True),
    ]


def _body_with_confident_points(counts: list[int], score: float = 0.9) -> np.ndarray:
    """Frames whose first ``counts[t]`` prompt points are confident and inside; the rest score 0."""
    body = np.zeros((len(counts), 20, 3))
    body[..., :2] = (10.0, 20.0)
    for frame, count in enumerate(counts):
        for index in PROMPT_INDICES[:count]:
            body[frame, index] = (5.0 + index, 6.0 + frame, score)
    return body


def test_keypoint_prompts_take_the_most_confident_frame_of_each_span():
    # 8 frames, 4 spans of 2: (0, 1) (2, 3) (4, 5) (6, 7).
    body = _body_with_confident_points([3, 5, 4, 4, 0, 0, 2, 2])
    body[3, PROMPT_INDICES[:4], 2] = 0.95  # frame 3 ties frame 2 on count, wins on score

    prompts = keypoint_prompts(body, (H, W), key_frames=4)

    frames = [prompt.frame for prompt in prompts]
    assert sorted(set(frames)) == [1, 3, 6]  # span (4, 5) has no usable point: no key frame there
    assert [frames.count(frame) for frame in (1, 3, 6)] == [5, 4, 2]
    assert all(prompt.positive for prompt in prompts)
    assert prompts[0] == PointPrompt(1, 5.0, 7.0, True)  # Nose of frame 1, at its pixel position


def test_keypoint_prompts_on_a_clip_shorter_than_the_key_frames():
    prompts = keypoint_prompts(_body_with_confident_points([1, 2]), (H, W), key_frames=4)
    assert [prompt.frame for prompt in prompts] == [0, 1, 1]


def test_keypoint_prompts_also_prompt_the_clicked_frames():
    body = _body_with_confident_points([3, 5, 2, 1])
    prompts = keypoint_prompts(body, (H, W), key_frames=1, click_frames=[2, 1, 9])
    frames = [prompt.frame for prompt in prompts]
    # Frame 1 is the key frame (and clicked: not repeated), frame 2 is clicked, frame 9 doesn't exist.
    assert frames == [1] * 5 + [2] * 2


def test_keypoint_prompts_refuse_a_clip_without_a_usable_point():
    with pytest.raises(WanAnimateError, match="No person found"):
        keypoint_prompts(_body_with_confident_points([0, 0, 0]), (H, W))
    outside = _body_with_confident_points([8, 8])
    outside[..., 0] = W + 5  # confident, but all right of the frame
    with pytest.raises(WanAnimateError, match="No person found"):
        keypoint_prompts(outside, (H, W))


# -- dilation, blockify, refine -----------------------------------------------------------------------


def test_dilating_one_pixel_with_the_defaults_gives_a_19_pixel_square():
    mask = np.zeros((41, 41), bool)
    mask[20, 20] = True
    dilated = dilate_mask(mask)  # k = 7, 3 iterations: each grows 7 // 2 = 3 px per side, 1 + 2 * 3 * 3 = 19
    assert dilated.dtype == np.uint8 and set(np.unique(dilated)) == {0, 1}
    expected = np.zeros((41, 41), np.uint8)
    expected[11:30, 11:30] = 1
    np.testing.assert_array_equal(dilated, expected)
    assert dilate_mask(mask, kernel_size=3, iterations=1).sum() == 9
    np.testing.assert_array_equal(dilate_mask(mask, iterations=0), mask.astype(np.uint8))


def test_blockify_one_by_one_fills_the_bounding_box_of_an_l_shape():
    mask = np.zeros((16, 16), np.uint8)
    mask[2:10, 3] = 1  # vertical stroke
    mask[9, 3:8] = 1  # foot
    expected = np.zeros_like(mask)
    expected[2:10, 3:8] = 1  # inclusive box: rows 2..9, columns 3..7
    np.testing.assert_array_equal(blockify_mask(mask), expected)


def test_blockify_grid_fills_exactly_the_cells_with_mask_pixels():
    mask = np.zeros((20, 20), np.uint8)
    mask[2, 4] = mask[9, 4] = mask[2, 11] = 1  # box rows 2..9, columns 4..11 (8 x 8)

    # 2 x 2 cells of 4 x 4: top-left, bottom-left and top-right hold pixels; bottom-right is empty.
    expected = np.zeros_like(mask)
    expected[2:10, 4:12] = 1
    expected[6:10, 8:12] = 0
    np.testing.assert_array_equal(blockify_mask(mask, w_len=2, h_len=2), expected)

    # w_len is the number of columns along x: 4 columns of width 2, only the outer two hold pixels.
    expected = np.zeros_like(mask)
    expected[2:10, 4:6] = 1
    expected[2:10, 10:12] = 1
    np.testing.assert_array_equal(blockify_mask(mask, w_len=4, h_len=1), expected)

    # h_len rows along y: 4 rows of height 2, only the top and bottom ones hold pixels.
    expected = np.zeros_like(mask)
    expected[2:4, 4:12] = 1
    expected[8:10, 4:12] = 1
    np.testing.assert_array_equal(blockify_mask(mask, w_len=1, h_len=4), expected)


def test_blockify_keeps_an_empty_mask_empty_and_survives_a_grid_finer_than_the_box():
    empty = np.zeros((8, 8), bool)
    np.testing.assert_array_equal(blockify_mask(empty, 4, 4), empty.astype(np.uint8))
    thin = np.zeros((8, 8), bool)
    thin[1:7, 3] = True  # one column wide, 6 rows tall
    np.testing.assert_array_equal(blockify_mask(thin, w_len=32, h_len=32), thin.astype(np.uint8))


def test_refine_masks_dilates_then_blockifies_each_frame():
    masks = np.zeros((3, 40, 40), bool)
    masks[0, 20, 20] = True
    masks[2, 5, 5] = masks[2, 5, 30] = True
    refined = refine_masks(masks, kernel_size=3, iterations=1, w_len=1, h_len=1)
    assert refined.dtype == np.uint8 and refined.shape == masks.shape
    expected = np.zeros((3, 40, 40), np.uint8)
    expected[0, 19:22, 19:22] = 1
    expected[2, 4:7, 4:32] = 1  # two dilated dots, then their joint bounding box
    np.testing.assert_array_equal(refined, expected)


# -- background, overlay, coverage, empty mask --------------------------------------------------------


def test_background_is_the_frame_times_one_minus_the_mask():
    frames = clip(3)
    masks = np.random.default_rng(1).integers(0, 2, (3, H, W)).astype(np.uint8)
    background = background_frames(frames, masks)
    assert background.dtype == np.uint8
    np.testing.assert_array_equal(background, np.where(masks[..., None] == 1, 0, frames))
    np.testing.assert_array_equal(background_frames(frames, masks.astype(bool)), background)


def test_overlay_tints_only_masked_pixels():
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    frames[0, 0, 0] = (101, 50, 2)
    frames[0, 1, 1] = (7, 8, 9)
    masks = np.zeros((1, 2, 2), np.uint8)
    masks[0, 0, 0] = 1
    overlay = mask_overlay_frames(frames, masks, color=(255, 0, 0), alpha=0.5)
    assert tuple(overlay[0, 0, 0]) == (178, 25, 1)  # 0.5 * 101 + 0.5 * 255 = 178
    assert tuple(overlay[0, 1, 1]) == (7, 8, 9)
    assert overlay.dtype == np.uint8


def test_overlay_rounds_halves_to_even_for_every_channel_value():
    # Every value 0..255 in each channel, masked everywhere but the last row.
    frame = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
    mask = np.ones((16, 16), bool)
    mask[-1] = False
    for color, alpha in (((255, 0, 0), 0.5), ((0, 200, 17), 0.3), ((9, 9, 9), 1.0), ((255, 255, 255), 0.0)):
        overlay = mask_overlay(frame, mask, color, alpha)
        expected = np.rint(frame.astype(np.float32) * np.float32(1 - alpha) + np.float32(alpha) * np.float32(color))
        np.testing.assert_array_equal(overlay[:-1], expected[:-1].astype(np.uint8))
        np.testing.assert_array_equal(overlay[-1], frame[-1])
    halves = mask_overlay(np.array([[[101, 103, 0]]], np.uint8), np.ones((1, 1), np.uint8), (0, 0, 0), 0.5)
    assert tuple(halves[0, 0]) == (50, 52, 0)  # 50.5 -> 50 and 51.5 -> 52, as numpy's rint


def test_overlay_and_background_leave_the_frames_alone():
    frames = clip(2)
    masks = np.random.default_rng(2).integers(0, 2, (2, H, W)).astype(np.uint8)
    before = frames.copy()
    overlay = mask_overlay_frames(frames, masks)
    out = np.zeros_like(frames[0])
    assert background_frame(frames[1], masks[1], out) is out
    np.testing.assert_array_equal(out, np.where(masks[1][..., None] == 1, 0, frames[1]))
    np.testing.assert_array_equal(frames, before)
    np.testing.assert_array_equal(overlay[masks == 0], frames[masks == 0])


def test_mask_coverage_is_the_mean_fraction_of_the_frame():
    masks = np.zeros((2, 4, 5), np.uint8)
    masks[0, 0, :] = 1  # 5 of 20
    masks[1, :3, :] = 1  # 15 of 20
    assert mask_coverage(masks) == pytest.approx(0.5)
    assert mask_coverage(masks.astype(bool)) == pytest.approx(0.5)
    assert mask_coverage(np.zeros((0, 4, 5))) == 0.0


def test_an_empty_mask_everywhere_is_refused():
    with pytest.raises(WanAnimateError, match="Add a positive point on the person"):
        require_mask(np.zeros((4, 8, 8), bool))
    one_pixel = np.zeros((4, 8, 8), bool)
    one_pixel[3, 2, 2] = True
    require_mask(one_pixel)


# -- SAM2 through the tiny model ----------------------------------------------------------------------


def test_segment_tracks_forward_then_backward_from_a_middle_prompt(segmenter):
    frames = clip(12)
    reports = []
    with Spy(segmenter.model) as spy:
        masks = segmenter.segment(
            frames, [PointPrompt(5, 20.0, 24.0), PointPrompt(5, 10.0, 10.0)], progress=lambda *r: reports.append(r)
        )
    assert masks.shape == (12, H, W) and masks.dtype == bool
    # The prompted frame first, then forward to the end, then backward to the first frame.
    assert spy.steps == [(5, False)] + [(t, False) for t in range(6, 12)] + [(t, True) for t in range(4, -1, -1)]
    assert reports == [(done, 12, "Segmenting the person") for done in range(1, 13)]


def test_segment_keeps_bounded_state_on_a_long_clip(segmenter):
    window = segmenter.memory_frames
    assert window == max(NUM_MASKMEM, MAX_OBJECT_POINTERS) - 1 == 3
    count = 24
    with Spy(segmenter.model) as spy:
        segmenter.segment(clip(count), [PointPrompt(8, 20.0, 24.0)])
    assert sorted(t for t, _ in spy.steps) == list(range(count))  # every frame, once
    assert max(spy.pixel_frames_held) == 1  # only the frame being segmented is held as pixels
    # Tracked frames' outputs (memories, pointers, masks) never exceed 2 windows + the current frame ...
    assert max(spy.tracked_states_held) <= 2 * window + 1 < count - 1
    # ... and the session left behind holds no more than that either.
    assert spy._tracked_states() <= 2 * window + 1
    assert len(spy.session.processed_frames) == 0


def test_segment_uses_every_prompted_frame_and_negative_points(segmenter):
    prompts = [PointPrompt(9, 30.0, 30.0), PointPrompt(3, 20.0, 24.0), PointPrompt(3, 2.0, 2.0, positive=False)]
    with Spy(segmenter.model) as spy:
        masks = segmenter.segment(clip(12), prompts)
    assert masks.shape == (12, H, W)
    assert spy.steps[:2] == [(3, False), (9, False)]  # each prompted frame from its own points first
    assert [t for t, _ in spy.steps].count(9) == 1  # and not tracked over again
    assert sorted(t for t, _ in spy.steps) == list(range(12))
    labels = spy.session.point_inputs_per_obj[0][3]["point_labels"]
    assert labels.flatten().tolist() == [1, 0]
    assert set(spy.session.output_dict_per_obj[0]["cond_frame_outputs"]) == {3, 9}


def sam2_own_masks(segmenter: PersonSegmenter, frames: np.ndarray, prompts: list[PointPrompt]) -> np.ndarray:
    """The masks of `transformers`' streaming session left to itself: each frame handed in as pixels (SAM2
    encodes it in its step), in `segment`'s order, keeping every frame's state."""
    session = segmenter.processor.init_video_session(inference_device="cpu", dtype=segmenter.dtype)
    height, width = frames.shape[1:3]
    masks = np.zeros(frames.shape[:3], bool)

    def step(index: int, reverse: bool = False) -> None:
        pixels = segmenter.processor(images=frames[index], return_tensors="pt").pixel_values[0]
        output = segmenter.model(inference_session=session, frame=pixels, frame_idx=index, reverse=reverse)
        masks[index] = segmenter.processor.post_process_masks([output.pred_masks], original_sizes=[(height, width)])[0][0, 0]

    prompted = sorted({prompt.frame for prompt in prompts})
    for index in prompted:
        mine = [prompt for prompt in prompts if prompt.frame == index]
        segmenter.processor.add_inputs_to_inference_session(
            session, frame_idx=index, obj_ids=1, original_size=(height, width),
            input_points=[[[[prompt.x, prompt.y] for prompt in mine]]],
            input_labels=[[[int(prompt.positive) for prompt in mine]]],
        )  # fmt: skip
        step(index)
    for index in range(prompted[0] + 1, len(frames)):
        if index not in prompted:
            step(index)
    for index in range(prompted[0] - 1, -1, -1):
        step(index, reverse=True)
    return masks


@pytest.mark.parametrize("encoder_batch", [1, 5])
def test_segment_encodes_frames_in_batches_ahead_with_sam2s_own_result(segmenter, encoder_batch, monkeypatch):
    frames = clip(14)
    prompts = [PointPrompt(4, 20.0, 24.0), PointPrompt(4, 10.0, 30.0), PointPrompt(9, 5.0, 5.0, positive=False)]
    expected = sam2_own_masks(segmenter, frames, prompts)
    batches = []
    encode = segmenter.model.get_image_features

    def counting_encode(pixel_values, **kwargs):
        batches.append(len(pixel_values))
        return encode(pixel_values, **kwargs)

    monkeypatch.setattr(segmenter, "encoder_batch", encoder_batch)
    monkeypatch.setattr(segmenter.model, "get_image_features", counting_encode)
    masks = segmenter.segment(frames, prompts)
    assert np.array_equal(masks, expected)
    # Every frame encoded once, in batches, and never again inside the model's step.
    assert batches == [encoder_batch] * (14 // encoder_batch) + [14 % encoder_batch] * (14 % encoder_batch > 0)


def test_segment_refuses_missing_or_misplaced_prompts(segmenter):
    with pytest.raises(WanAnimateError, match="at least one point"):
        segmenter.segment(clip(3), [])
    with pytest.raises(WanAnimateError, match="frame 3, but the clip has frames 0 to 2"):
        segmenter.segment(clip(3), [PointPrompt(3, 1.0, 1.0)])


def test_segment_refuses_a_mask_that_is_empty_everywhere(sam2_folder):
    blind = PersonSegmenter.from_pretrained(sam2_folder, device="cpu")
    with torch.no_grad():  # mask logits = hypernetwork output . features: zero the hypernetworks, no pixel > 0
        for mlp in blind.model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.zero_()
            mlp.proj_out.bias.zero_()
    with pytest.raises(WanAnimateError, match="No person could be segmented"):
        blind.segment(clip(3), [PointPrompt(1, 20.0, 24.0)])


# -- loading ------------------------------------------------------------------------------------------


def test_loading_from_the_hub_downloads_only_the_needed_files(sam2_folder, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(sam2_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    segmenter = PersonSegmenter.from_pretrained(DEFAULT_SAM2, device="cpu")
    assert calls == [{"repo_id": "facebook/sam2.1-hiera-large", "allow_patterns": SAM2_FILES}]
    assert segmenter.device == "cpu" and segmenter.dtype == torch.float32
    assert segmenter.encoder_batch == 1  # on the CPU, frames are encoded one at a time, as SAM2 does

    def fetched(name: str) -> bool:
        return any(fnmatch(name, pattern) for pattern in SAM2_FILES)

    repo_files = ["config.json", "model.safetensors", "processor_config.json", "preprocessor_config.json",
                  "video_preprocessor_config.json"]  # fmt: skip
    assert all(fetched(name) for name in repo_files)
    assert not fetched("sam2.1_hiera_large.pt") and not fetched("README.md")


def test_loading_refuses_a_folder_without_sam2(tmp_path):
    with pytest.raises(WanAnimateError, match="does not hold a SAM2 video model"):
        PersonSegmenter.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(WanAnimateError, match="neither a folder nor"):
        PersonSegmenter.from_pretrained(tmp_path / "missing" / "sam2" / "folder", device="cpu")
