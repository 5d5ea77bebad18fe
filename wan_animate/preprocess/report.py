"""The quality report a person reads before spending GPU minutes on generation."""

from __future__ import annotations

from dataclasses import dataclass, field

WARN_MASK_COVERAGE = 0.9
"""Above this mean fraction of the frame, the mask regenerates nearly everything and keeps little of the scene."""


@dataclass
class QualityReport:
    """How well preprocessing saw the person, with warnings in plain words.

    Attributes:
        frames: Frames in the conditioning.
        person_frames: Frames in which the chosen person was detected.
        persons_seen: Most people detected at once in any frame.
        mean_pose_confidence: Mean score of the 20 body keypoints over frames with the person (0..1).
        face_found_ratio: Fraction of frames whose face landmarks were found (others reuse the last box).
        mask_coverage: Replacement only: mean fraction of the frame the mask regenerates.
        detect_every: The person detector ran on every this-many-th frame (and the last); the boxes in
            between were interpolated.
        detect_device: Where the detector ran (``"cpu"``, ``"cuda"``, ...), which decided the default stride.
        person_height: Median height of the person's box in the driving video's pixels (a small person is
            refused or warned about: `wan_animate.validation.check_person_height`).
        pose_backend: What the pose model ran in (``"torch"`` or ``"onnxruntime"``).
        pose_fallback: Why it ran in onnxruntime although torch was asked for (the file's graph could not be
            read into torch), else ``None``.
        warnings: Plain-language problems worth fixing before generating.
    """

    frames: int
    person_frames: int
    persons_seen: int
    mean_pose_confidence: float
    face_found_ratio: float
    mask_coverage: float | None = None
    detect_every: int = 1
    detect_device: str | None = None
    person_height: float | None = None
    pose_backend: str | None = None
    pose_fallback: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.warnings = list(self.warnings)  # the report's own list: the mask warning below is added to it
        if self.mask_coverage is not None and self.mask_coverage > WARN_MASK_COVERAGE:
            self.warnings.append(
                f"The mask covers {self.mask_coverage:.0%} of the frame: nearly the whole picture is regenerated and "
                "little of the scene is kept. Lower the mask dilation, use a finer blockify grid, or click on what "
                "is not the person."
            )

    def to_markdown(self) -> str:
        """The report as a short Markdown list for the app."""
        lines = [
            (
                f"- **Person found** in {self.person_frames} of {self.frames} frames"
                f" ({self.persons_seen} {'person' if self.persons_seen == 1 else 'people'} seen at most)"
            ),
            *([f"- **Person height** about {self.person_height:.0f} px"] if self.person_height is not None else []),
            f"- **Pose confidence**: {self.mean_pose_confidence:.2f}",
            f"- **Face found** in {self.face_found_ratio:.0%} of frames",
        ]
        if self.mask_coverage is not None:
            lines.append(f"- **Mask covers** {self.mask_coverage:.0%} of the frame")
        lines.append(f"- **People detected** {self.detection_text()}")
        if self.pose_fallback:
            lines.append(
                f"- **Pose model** ran in {self.pose_backend}: its file could not be read into torch "
                f"({self.pose_fallback}). The keypoints are the same; only the speed may differ."
            )
        lines += [f"- ⚠️ {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def detection_text(self) -> str:
        """How often people were detected, e.g. "on every 5th frame (CPU), boxes in between interpolated"."""
        device = "" if not self.detect_device else f" ({self.detect_device.split(':')[0].upper()})"
        if self.detect_every == 1:
            return f"on every frame{device}"
        return f"on every {_ordinal(self.detect_every)} frame{device}, boxes in between interpolated"

    def to_dict(self) -> dict:
        """The report as plain JSON-ready values (the client API returns it)."""
        return {
            "frames": self.frames,
            "person_frames": self.person_frames,
            "persons_seen": self.persons_seen,
            "mean_pose_confidence": round(self.mean_pose_confidence, 4),
            "face_found_ratio": round(self.face_found_ratio, 4),
            "mask_coverage": None if self.mask_coverage is None else round(self.mask_coverage, 4),
            "detect_every": self.detect_every,
            "detect_device": self.detect_device,
            "person_height": None if self.person_height is None else round(self.person_height, 1),
            "pose_backend": self.pose_backend,
            "pose_fallback": self.pose_fallback,
            "warnings": list(self.warnings),
        }


def _ordinal(number: int) -> str:
    """2nd, 3rd, 5th, 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
