"""`Preprocessor`: photo + video -> conditioning, previews and report, in both modes.

The first tests replace the three models with fakes that return hand-made boxes, keypoints and masks, so the
orchestration is checked against the contract's numbers (which canvas, which coordinates, which crop). The last
ones run the real loaders on the tiny random models.
"""

from __future__ import annotations

import math
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from tests.e2e_fixtures import small_media, tiny_models  # noqa: F401  (session fixture)
from tests.media import audio_duration, video_facts, write_test_video
from wan_animate import validation
from wan_animate.demo import DEMO_AREAS
from wan_animate.errors import WanAnimateError
from wan_animate.preprocess import PreprocessOptions, Preprocessor, prepare, sizing
from wan_animate.preprocess.detect import CPU_BATCH, GPU_BATCH
from wan_animate.preprocess.face import crop_faces, track_face_boxes
from wan_animate.preprocess.frames import decode_batches
from wan_animate.preprocess.keypoints import split_wholebody
from wan_animate.preprocess.mask import PointPrompt
from wan_animate.preprocess.report import QualityReport
from wan_animate.preprocess.sizing import letterbox, output_size
from wan_animate.preprocess.skeleton import draw_skeleton
from wan_animate.preprocess.writers import VideoWriters

# The test media are smaller than the real input minimums (see tests.e2e_fixtures.TEST_LIMITS).
pytestmark = pytest.mark.usefixtures("small_media")

FRAMES = 6


def hand_made_keypoints(height: int, width: int, face_score: float = 0.9) -> np.ndarray:
    """133 whole-body points as fixed fractions of the frame: a spread-out body and hands, a compact face."""
    index = np.arange(133)
    points = np.empty((133, 3))
    points[:, 0] = (0.3 + 0.4 * ((index * 37) % 100) / 100) * width
    points[:, 1] = (0.3 + 0.6 * ((index * 53) % 100) / 100) * height
    points[:, 2] = 0.9
    face = slice(23, 91)
    points[face, 0] = (0.45 + 0.1 * ((index[face] * 7) % 17) / 17) * width
    points[face, 1] = (0.12 + 0.1 * ((index[face] * 11) % 13) / 13) * height
    points[face, 2] = face_score
    return points


class FakeDetector:
    def __init__(self, people_per_frame=None, device="cpu"):
        self.people = people_per_frame
        self.device = device
        self.batch_size = GPU_BATCH if torch.device(device).type == "cuda" else CPU_BATCH  # as PersonDetector's
        self.seen = []  # every frame it was asked about, in order

    def detect(self, frames, *, score_threshold=0.5, batch_size=8):
        self.seen += list(frames)
        out = []
        for frame in frames:
            h, w = frame.shape[:2]
            count = 1 if self.people is None else self.people.pop(0)
            boxes = [[0.2 * w, 0.1 * h, 0.8 * w, 0.95 * h, 0.9]] + [[0.0, 0.0, 0.1 * w, 0.1 * h, 0.8]] * (count - 1)
            out.append(np.array(boxes[:count], float).reshape(-1, 5))
        return out


class FakePose:
    backend, fallback = "fake", None

    def __init__(self, face_score=0.9):
        self.face_score = face_score
        self.sizes = []

    def estimate(self, frames, boxes, *, batch_size=16, progress=None):
        self.sizes += [frame.shape[:2] for frame in frames]
        return np.stack([hand_made_keypoints(*frame.shape[:2], self.face_score) for frame in frames])


class FakeSegmenter:
    def __init__(self):
        self.prompts = None

    def segment(self, frames, prompts, *, progress=None):
        self.prompts = list(prompts)
        masks = np.zeros(frames.shape[:3], bool)
        masks[:, 20:30, 30:40] = True
        return masks


def fake_preprocessor(detector=None, pose=None, segmenter=None) -> Preprocessor:
    preprocessor = Preprocessor("unused-detector", "unused-pose", "unused-sam2")
    # The models are cached properties: setting them replaces the lazy loading.
    preprocessor.detector = detector or FakeDetector()
    preprocessor.pose_estimator = pose or FakePose()
    preprocessor.segmenter = segmenter or FakeSegmenter()
    return preprocessor


@pytest.fixture
def media(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.clip(rng.normal(120, 40, (FRAMES, 200, 400, 3)), 0, 255).astype(np.uint8)
    video = write_test_video(tmp_path / "driving.mp4", frames, 30.0, audio_seconds=FRAMES / 30)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((100, 80, 3), 200, np.uint8)).save(photo)
    return {"video": video, "photo": photo, "frames": frames}


def decoded(path, size=None):
    from wan_animate.video import read_video

    return read_video(path, fps=None, max_seconds=None, size=size).frames


def test_animation_draws_on_the_driving_canvas_and_letterboxes(media, tmp_path, monkeypatch):
    # Analyse at half size: keypoints must come back in the driving video's own pixels.
    monkeypatch.setattr(prepare, "ANALYSIS_MAX_SIDE", 200)
    pose = FakePose()
    result = fake_preprocessor(pose=pose).prepare("animate", media["photo"], media["video"], tmp_path / "job", PreprocessOptions(resolution="480p"))
    cond = result.conditioning
    size = output_size(100, 80, "480p")  # the photo's aspect
    assert (cond.height, cond.width) == size and cond.num_frames == FRAMES and cond.fps == 30.0
    assert set(pose.sizes) == {(100, 200)}
    original_pose = split_wholebody(hand_made_keypoints(200, 400))
    expected = letterbox(draw_skeleton(original_pose, (200, 400)), size)  # width from the 200x400 canvas
    assert np.array_equal(cond.pose_frames[0], expected)
    # Face crops come from the original frames with the contract's box.
    boxes, found = track_face_boxes(np.repeat(original_pose.face[None], FRAMES, 0), (200, 400))
    assert found.all()
    frames = decoded(media["video"])
    assert np.array_equal(cond.face_frames[2], crop_faces(frames[2:3], boxes[2:3])[0])
    assert np.array_equal(cond.reference_image, letterbox(np.full((100, 80, 3), 200, np.uint8), size, interpolation="auto"))
    assert cond.audio_source == media["video"]
    # Previews a person looks at, and the conditioning folder in the upstream layout.
    assert video_facts(result.skeleton_video)["frames"] == FRAMES
    assert video_facts(result.face_video)["width"] == 512
    assert (result.folder / "conditioning" / "src_pose.mp4").is_file()
    assert result.report.person_frames == FRAMES and result.report.face_found_ratio == 1.0
    assert result.report.mean_pose_confidence == pytest.approx(0.9)
    assert result.mask_video is None


def test_animation_with_retargeting_draws_on_the_output_canvas(media, tmp_path):
    result = fake_preprocessor().prepare(
        "animate", media["photo"], media["video"], tmp_path / "job", PreprocessOptions(resolution="480p", retarget=True)
    )
    size = output_size(100, 80, "480p")
    from wan_animate.preprocess.retarget import retarget_poses

    reference = letterbox(np.full((100, 80, 3), 200, np.uint8), size, interpolation="auto")
    reference_pose = split_wholebody(hand_made_keypoints(*reference.shape[:2]))
    driving = split_wholebody(np.stack([hand_made_keypoints(200, 400)] * FRAMES))
    expected = draw_skeleton(retarget_poses(reference_pose, driving).frame(0), size)
    assert np.array_equal(result.conditioning.pose_frames[0], expected)


def test_replacement_works_at_the_output_size(media, tmp_path):
    segmenter = FakeSegmenter()
    click = PointPrompt(frame=1, x=10.0, y=12.0, positive=False)
    options = PreprocessOptions(resolution="480p", points=[click], mask_kernel=3, mask_iterations=1)
    result = fake_preprocessor(segmenter=segmenter).prepare("replace", media["photo"], media["video"], tmp_path / "job", options)
    cond = result.conditioning
    size = output_size(200, 400, "480p")  # the video's aspect
    assert (cond.height, cond.width) == size
    assert click in segmenter.prompts and all(p.positive for p in segmenter.prompts if p != click)
    # Dilation by a 3x3 kernel once grows the 10x10 box by one pixel; blockify 1x1 keeps it a box.
    expected_mask = np.zeros(size, np.uint8)
    expected_mask[19:31, 29:41] = 1
    assert np.array_equal(cond.mask_frames[3], expected_mask)
    frames = np.stack([letterbox(f, size, interpolation="auto") for f in decoded(media["video"])])
    assert np.array_equal(cond.background_frames, frames * (1 - cond.mask_frames[..., None]))
    assert np.array_equal(cond.pose_frames[0], draw_skeleton(split_wholebody(hand_made_keypoints(*size)), size))
    assert result.report.mask_coverage == pytest.approx(144 / (size[0] * size[1]))
    assert video_facts(result.mask_video)["frames"] == FRAMES and video_facts(result.background_video)["frames"] == FRAMES


def test_several_people_are_reported(media, tmp_path):
    detector = FakeDetector(people_per_frame=[2] * FRAMES)
    result = fake_preprocessor(detector=detector).prepare("animate", media["photo"], media["video"], tmp_path / "job")
    assert result.report.persons_seen == 2
    assert any("2 people" in warning for warning in result.report.warnings)


@pytest.mark.parametrize(
    "detector,pose,message",
    [
        (FakeDetector(people_per_frame=[0] * FRAMES), None, "No person was found"),
        (FakeDetector(people_per_frame=[1] + [0] * (FRAMES - 1)), None, "found in only 1 of 6 frames"),
        (None, FakePose(face_score=0.0), "No face was found"),
    ],
)
def test_problems_are_refused_and_leave_nothing_behind(media, tmp_path, detector, pose, message):
    job = tmp_path / "job"
    with pytest.raises(WanAnimateError, match=message):
        fake_preprocessor(detector=detector, pose=pose).prepare("animate", media["photo"], media["video"], job)
    assert not job.exists()


def test_bad_inputs_are_refused(media, tmp_path):
    preprocessor = fake_preprocessor()
    with pytest.raises(WanAnimateError, match="still image, not a video"):
        preprocessor.prepare("animate", media["photo"], media["photo"], tmp_path / "a")
    with pytest.raises(WanAnimateError, match="as an image"):
        preprocessor.prepare("animate", media["video"], media["video"], tmp_path / "b")
    with pytest.raises(WanAnimateError, match="limit is 0.1 s"):
        preprocessor.prepare("animate", media["photo"], media["video"], tmp_path / "c", PreprocessOptions(max_seconds=0.1))
    with pytest.raises(WanAnimateError, match="Unknown mode"):
        preprocessor.prepare("dance", media["photo"], media["video"], tmp_path / "d")
    assert not any(tmp_path.glob("[abcd]"))


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_tiny_models_end_to_end(tiny_models, tmp_path, monkeypatch, mode):  # noqa: F811
    monkeypatch.setitem(sizing.RESOLUTION_AREAS, "480p", DEMO_AREAS["480p"])
    from tests.e2e_fixtures import dancing_frames

    video = write_test_video(tmp_path / "dance.mp4", dancing_frames(10), 30.0, audio_seconds=10 / 30)
    photo = tmp_path / "photo.png"
    Image.fromarray(dancing_frames(1)[0]).save(photo)
    preprocessor = Preprocessor(tiny_models.detector, tiny_models.pose, tiny_models.sam2, device="cpu")
    result = preprocessor.prepare(mode, photo, video, tmp_path / "job", PreprocessOptions(resolution="480p"))
    cond = result.conditioning
    assert cond.mode == mode and cond.num_frames == 10 and cond.face_frames.shape[1:] == (512, 512, 3)
    assert cond.pose_frames.any(), "the skeleton should have been drawn"
    report = result.report.to_dict()
    assert report["frames"] == 10 and report["person_frames"] == 10
    assert 0 < report["mean_pose_confidence"] <= 1
    if mode == "replace":
        assert 0 < report["mask_coverage"] <= 1 and cond.mask_frames.any()
    assert audio_duration(video) > 0 and cond.audio_source == video


# -- detecting on every N-th frame --------------------------------------------------------------------


def test_cpu_default_detects_every_fifth_frame_resized_like_the_pose_pass(media, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "ANALYSIS_MAX_SIDE", 160)  # 0.4x: area and bilinear resizing differ
    detector = FakeDetector(device="cpu")
    result = fake_preprocessor(detector=detector).prepare(
        "animate", media["photo"], media["video"], tmp_path / "job", PreprocessOptions(resolution="480p")
    )
    # 30 fps on the CPU: every 5th frame from the first, and the last (here the 5th too).
    analysis = decoded(media["video"], size=(80, 160))
    assert len(detector.seen) == 2
    for frame, index in zip(detector.seen, [0, 5]):
        assert np.array_equal(frame, analysis[index])  # only these were resized, by the pose pass's rule
    assert result.report.person_frames == FRAMES  # boxes in between were interpolated
    assert (result.report.detect_every, result.report.detect_device) == (5, "cpu")


def test_gpu_default_detects_every_frame(media, tmp_path, monkeypatch):
    # There is no GPU here: the decoded frames stay on the CPU while the detector says it is on a GPU.
    decode_on_cpu = lambda *args, **kwargs: decode_batches(*args, **{**kwargs, "device": "cpu"})  # noqa: E731
    monkeypatch.setattr(prepare, "decode_batches", decode_on_cpu)
    detector = FakeDetector(device="cuda:0")
    result = fake_preprocessor(detector=detector).prepare("animate", media["photo"], media["video"], tmp_path / "job")
    assert len(detector.seen) == FRAMES
    assert result.report.detect_every == 1
    assert "- **People detected** on every frame (CUDA)" in result.report.to_markdown()


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_a_miss_on_a_detected_frame_is_reported_not_interpolated(media, tmp_path, mode):
    # Stride 2 on 6 frames detects frames 0, 2, 4 and the last, 5; the person is missing on frame 2.
    detector = FakeDetector(people_per_frame=[1, 0, 1, 1])
    options = PreprocessOptions(resolution="480p", detect_every=2)
    result = fake_preprocessor(detector=detector).prepare(mode, media["photo"], media["video"], tmp_path / "job", options)
    assert len(detector.seen) == 4 and detector.people == []
    report = result.report
    assert report.person_frames == 3  # frames 0, 4, 5: nothing invented over 1..3
    assert any("missing in 3 frames" in warning for warning in report.warnings)
    assert report.to_dict()["detect_every"] == 2 and report.to_dict()["detect_device"] == "cpu"


def test_a_detection_stride_below_one_is_refused(media, tmp_path):
    options = PreprocessOptions(detect_every=0)
    with pytest.raises(WanAnimateError, match="Detect every must be a whole number from 1 to 30; got 0"):
        fake_preprocessor().prepare("animate", media["photo"], media["video"], tmp_path / "job", options)
    assert not (tmp_path / "job").exists()


def test_report_says_how_often_people_were_detected():
    report = QualityReport(frames=60, person_frames=60, persons_seen=1, mean_pose_confidence=0.9, face_found_ratio=1.0)
    assert report.detect_every == 1 and "- **People detected** on every frame\n" in report.to_markdown() + "\n"
    report.detect_every, report.detect_device = 5, "cpu"
    assert "- **People detected** on every 5th frame (CPU), boxes in between interpolated" in report.to_markdown()
    report.detect_every, report.detect_device = 3, "cuda:1"
    assert "on every 3rd frame (CUDA)" in report.to_markdown()
    assert report.to_dict()["detect_every"] == 3 and report.to_dict()["detect_device"] == "cuda:1"


def test_tiny_models_detect_on_the_stride_the_last_and_the_clicked_frame(tiny_models, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sizing.RESOLUTION_AREAS, "480p", DEMO_AREAS["480p"])
    from tests.e2e_fixtures import dancing_frames

    frames = dancing_frames(11)
    frames[:, 58:] = (40 + 10 * np.arange(11)).astype(np.uint8)[:, None, None, None]  # tell the frames apart
    video = write_test_video(tmp_path / "dance.mp4", frames, 30.0)
    photo = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(photo)
    analysis = decoded(video)  # 64 x 48 is analysed at its own size
    preprocessor = Preprocessor(tiny_models.detector, tiny_models.pose, tiny_models.sam2, device="cpu")
    # Click the middle of the largest person box of frame 4 (the click is in output-size pixels).
    boxes = preprocessor.detector.detect([analysis[4]])[0]
    x1, y1, x2, y2 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), :4]
    size = output_size(64, 48, "480p")
    point = (4, (x1 + x2) / 2 * size[1] / 48, (y1 + y2) / 2 * size[0] / 64)

    seen = []
    detect = preprocessor.detector.detect

    def counting_detect(batch, **kwargs):
        seen.extend(batch)
        return detect(batch, **kwargs)

    monkeypatch.setattr(preprocessor.detector, "detect", counting_detect)
    options = PreprocessOptions(resolution="480p", detect_every=3, person_point=point)
    result = preprocessor.prepare("animate", photo, video, tmp_path / "job", options)
    indices = []
    for frame in seen:
        matches = [index for index, decoded_frame in enumerate(analysis) if np.array_equal(frame, decoded_frame)]
        assert len(matches) == 1
        indices += matches
    assert indices == [0, 3, 4, 6, 9, 10]  # the stride, the clicked frame and the last frame
    report = result.report
    assert result.conditioning.num_frames == 11 and report.person_frames == 11
    assert report.to_dict()["detect_every"] == 3 and "on every 3rd frame (CPU)" in report.to_markdown()


def test_a_pose_file_torch_cannot_read_runs_in_onnxruntime_and_the_report_says_so(media, tmp_path):
    from wan_animate.demo.preprocess_models import build_foreign_pose_onnx
    from wan_animate.preprocess.pose import PoseEstimator

    pose = PoseEstimator.from_pretrained(build_foreign_pose_onnx(tmp_path / "other.onnx"), backend="torch", device="cpu")
    result = fake_preprocessor(pose=pose).prepare("animate", media["photo"], media["video"], tmp_path / "job", PreprocessOptions(resolution="480p"))
    report = result.report
    assert report.pose_backend == "onnxruntime" and "position embedding" in report.pose_fallback
    assert report.to_dict()["pose_backend"] == "onnxruntime"
    assert "**Pose model** ran in onnxruntime" in report.to_markdown()


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_refuse_a_person_smaller_than_the_minimum_in_the_videos_own_pixels(media, tmp_path, monkeypatch, mode):
    """The fake person is 0.85 of the 200-px frame: 170 px of the video, whatever size the frames were analysed at."""
    monkeypatch.setattr(prepare, "ANALYSIS_MAX_SIDE", 200)  # Animation analyses at half size
    monkeypatch.setattr(validation, "MIN_PERSON_HEIGHT", 171)
    with pytest.raises(WanAnimateError, match=r"The person in driving.mp4 is only about 170 px tall; at least 171 px"):
        fake_preprocessor().prepare(mode, media["photo"], media["video"], tmp_path / "job", PreprocessOptions(resolution="480p"))
    assert not (tmp_path / "job").exists()


def test_refuse_warns_about_a_small_person_in_the_report(media, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "WARN_PERSON_HEIGHT", 171)
    report = fake_preprocessor().prepare("animate", media["photo"], media["video"], tmp_path / "job").report
    assert report.person_height == pytest.approx(170, abs=0.5) and report.to_dict()["person_height"] == pytest.approx(170, abs=0.5)
    assert any("about 170 px tall" in warning and "under 171 px" in warning for warning in report.warnings)
    assert "**Person height** about 170 px" in report.to_markdown()


def test_refuse_a_photo_or_video_under_the_minimum_size(media, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "MIN_PHOTO_SIDE", 81)  # the photo is 80 x 100
    with pytest.raises(WanAnimateError, match=r"The photo photo.png is 80x100 px; its shorter side must be at least 81 px"):
        fake_preprocessor().prepare("animate", media["photo"], media["video"], tmp_path / "a")
    monkeypatch.setattr(validation, "MIN_VIDEO_SIDE", 201)  # the video is 400 x 200
    with pytest.raises(WanAnimateError, match=r"The video driving.mp4 is 400x200 px; its shorter side must be at least 201 px"):
        fake_preprocessor().prepare("replace", media["photo"], media["video"], tmp_path / "b")


# -- stages, timings, writing while the GPU works, the photo's letterbox ------------------------------

ANIMATION_STAGES = ["Reading the inputs", "Detecting people", "Estimating pose", "Cropping faces", "Writing videos"]
REPLACEMENT_STAGES = ANIMATION_STAGES[:4] + ["Segmenting the person", "Making the mask and background", "Writing videos"]


class RecordingSegmenter(FakeSegmenter):
    """Notes what the progress bar said when SAM2 ran."""

    def __init__(self, labels, events):
        super().__init__()
        self.labels, self.events = labels, events

    def segment(self, frames, prompts, *, progress=None):
        self.events.append(("segment", self.labels[-1]))
        return super().segment(frames, prompts, progress=progress)


@pytest.mark.parametrize("mode,stages", [("animate", ANIMATION_STAGES), ("replace", REPLACEMENT_STAGES)])
def test_each_stage_is_timed_and_labelled_while_it_runs(media, tmp_path, monkeypatch, mode, stages):
    labels, events = [], []

    class RecordingWriters(VideoWriters):
        def start(self, name, frames):
            events.append(("write", name))
            super().start(name, frames)

    monkeypatch.setattr(prepare, "VideoWriters", RecordingWriters)
    preprocessor = fake_preprocessor(segmenter=RecordingSegmenter(labels, events))
    started = time.perf_counter()
    result = preprocessor.prepare(
        mode, media["photo"], media["video"], tmp_path / "job", progress=lambda done, total, label: labels.append(label)
    )
    elapsed = time.perf_counter() - started
    assert list(result.timings) == stages
    assert all(seconds >= 0 for seconds in result.timings.values()) and sum(result.timings.values()) <= elapsed
    assert list(dict.fromkeys(labels)) == stages  # every stage announced itself, in order
    assert not (tmp_path / "job" / ".encoding").exists()
    if mode == "replace":
        # The skeleton and face videos are encoding while SAM2 runs, and SAM2 runs under its own label.
        assert events == [
            ("write", "src_pose.mp4"), ("write", "src_face.mp4"), ("segment", "Segmenting the person"),
            ("write", "src_bg.mp4"), ("write", "src_mask.mp4"), ("write", "mask.mp4"),
        ]  # fmt: skip


def test_a_failure_while_videos_are_encoding_leaves_nothing_behind(media, tmp_path):
    class FailingSegmenter(FakeSegmenter):
        def segment(self, frames, prompts, *, progress=None):
            raise WanAnimateError("No person could be segmented")

    job = tmp_path / "job"
    with pytest.raises(WanAnimateError, match="No person could be segmented"):
        fake_preprocessor(segmenter=FailingSegmenter()).prepare("replace", media["photo"], media["video"], job)
    assert not job.exists()
    assert not any(thread.name.startswith("wan-animate-") for thread in threading.enumerate())


def test_replacement_letterboxes_the_photo_bilinearly_as_upstream(media, tmp_path, monkeypatch):
    # The 200 x 400 video gives a 32 x 64 output. The photo is 3x that, in columns of 0, 90, 240: bilinear
    # (upstream's cv2.INTER_LINEAR) samples each output pixel at the middle source column, 90; area averaging
    # (what "auto" does when shrinking) would give their mean, 110.
    monkeypatch.setitem(sizing.RESOLUTION_AREAS, "480p", 32 * 64)
    photo = np.broadcast_to(np.tile(np.array([0, 90, 240], np.uint8), 64)[None, :, None], (96, 192, 3)).copy()
    Image.fromarray(photo).save(tmp_path / "striped.png")
    result = fake_preprocessor().prepare(
        "replace", tmp_path / "striped.png", media["video"], tmp_path / "job", PreprocessOptions(resolution="480p")
    )
    assert result.conditioning.reference_image.shape == (32, 64, 3)
    assert (result.conditioning.reference_image == 90).all()


def test_animation_keeps_large_clips_at_the_held_size_for_the_face_crops(media, tmp_path, monkeypatch):
    # The 200 x 400 clip stands in for a 4K one: kept at 100 x 200, analysed at 50 x 100.
    monkeypatch.setattr(prepare, "HELD_MAX_SIDE", 200)
    monkeypatch.setattr(prepare, "ANALYSIS_MAX_SIDE", 100)
    pose = FakePose()
    result = fake_preprocessor(pose=pose).prepare(
        "animate", media["photo"], media["video"], tmp_path / "job", PreprocessOptions(resolution="480p")
    )
    assert set(pose.sizes) == {(50, 100)}
    cond = result.conditioning
    size = output_size(100, 80, "480p")
    # The skeleton is still drawn on the driving video's own 200 x 400 canvas ...
    assert np.array_equal(cond.pose_frames[0], letterbox(draw_skeleton(split_wholebody(hand_made_keypoints(200, 400)), (200, 400)), size))
    # ... and the faces are cut from the kept 100 x 200 frames, with boxes in their pixels.
    held = decoded(media["video"], size=(100, 200))
    boxes, _ = track_face_boxes(np.repeat(split_wholebody(hand_made_keypoints(100, 200)).face[None], FRAMES, 0), (100, 200))
    assert np.array_equal(cond.face_frames, crop_faces(held, boxes))




def test_animation_on_the_cpu_keeps_no_decoded_frames_however_long_the_clip(media, tmp_path, monkeypatch):
    # Host memory, as tracemalloc counts numpy's arrays. Per frame of the clip, the job keeps a 512x512 face crop
    # and a skeleton frame (made tiny here); were the decoded frames kept too (larger than a crop here), the peak
    # would grow by them as well. On the CPU they are decoded again instead. The decoder's read-ahead (up to
    # `frames.PREFETCH_FRAMES`) is there whatever the length, give or take its fill.
    monkeypatch.setitem(sizing.RESOLUTION_AREAS, "480p", 32 * 64)
    height, width, count, short = 480, 832, 120, 20
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    frames = np.stack([np.broadcast_to((ramp + 3 * index) % 256, (height, width, 3)) for index in range(count)])
    video = write_test_video(tmp_path / "long.mp4", frames.astype(np.uint8), 30.0)
    del frames

    def peak_bytes(frames: int) -> int:
        options = PreprocessOptions(resolution="480p", end=frames / 30)
        tracemalloc.start()
        try:
            result = fake_preprocessor().prepare("animate", media["photo"], video, tmp_path / f"job{frames}", options)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.conditioning.num_frames == frames
        return peak

    kept_per_frame = 512 * 512 * 3 + 3 * math.prod(output_size(100, 80, "480p"))  # a face crop, a skeleton frame
    growth = peak_bytes(count) - peak_bytes(short)
    assert growth < (count - short) * (kept_per_frame + height * width * 3 / 2)


def test_animation_keeping_the_decoded_clip_gives_what_decoding_it_again_gives(media, tmp_path, monkeypatch):
    # On a GPU the clip is kept (in its memory) for the pose model and the face crops; on the CPU it is decoded
    # again for each. Both ways, the pose model must see the same frames and the crops must be the same.
    class SeeingPose(FakePose):
        def estimate(self, frames, boxes, **kwargs):
            self.seen = [*getattr(self, "seen", []), *(frame.copy() for frame in frames)]
            return super().estimate(frames, boxes, **kwargs)

    again_pose, kept_pose = SeeingPose(), SeeingPose()
    again = fake_preprocessor(pose=again_pose).prepare("animate", media["photo"], media["video"], tmp_path / "again")
    monkeypatch.setattr(Preprocessor, "_keeps_decoded_clip", lambda self: True)
    kept = fake_preprocessor(pose=kept_pose).prepare("animate", media["photo"], media["video"], tmp_path / "kept")
    assert len(again_pose.seen) == FRAMES
    assert np.array_equal(np.stack(kept_pose.seen), np.stack(again_pose.seen))
    assert np.array_equal(kept.conditioning.face_frames, again.conditioning.face_frames)
    assert np.array_equal(kept.conditioning.pose_frames, again.conditioning.pose_frames)
