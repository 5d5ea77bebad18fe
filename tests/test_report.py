"""The quality report (wan_animate.preprocess.report): its warnings."""

from __future__ import annotations

import pytest

from wan_animate.preprocess.report import WARN_MASK_COVERAGE, QualityReport


def _report(**changes) -> QualityReport:
    values = dict(frames=60, person_frames=60, persons_seen=1, mean_pose_confidence=0.9, face_found_ratio=1.0)
    return QualityReport(**{**values, **changes})


@pytest.mark.parametrize("coverage", [1.0, 0.95])
def test_a_mask_over_nine_tenths_of_the_frame_is_warned_about(coverage):
    report = _report(mask_coverage=coverage, warnings=["earlier warning"])
    assert len(report.warnings) == 2 and report.warnings[0] == "earlier warning"
    assert f"The mask covers {coverage:.0%} of the frame" in report.warnings[1]
    assert f"⚠️ The mask covers {coverage:.0%}" in report.to_markdown()
    assert report.to_dict()["warnings"] == report.warnings


@pytest.mark.parametrize("coverage", [None, 0.3, WARN_MASK_COVERAGE])
def test_a_smaller_mask_or_none_passes(coverage):
    assert _report(mask_coverage=coverage).warnings == []


def test_the_callers_warning_list_is_not_changed():
    given = ["earlier warning"]
    _report(mask_coverage=1.0, warnings=given)
    assert given == ["earlier warning"]
