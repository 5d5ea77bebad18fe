"""Clicks on frames (wan_animate.picker): parsing, scaling to prompts, drawing, reading the clicked frame."""

from __future__ import annotations

import numpy as np
import pytest

from tests.media import counter_frames, frame_index, write_test_video
from wan_animate.errors import WanAnimateError
from wan_animate.picker import (
    Click,
    click_at,
    describe_clicks,
    draw_clicks,
    dump_clicks,
    parse_clicks,
    person_point,
    read_frame,
    to_point_prompts,
)


def test_parse_accepts_objects_and_lists_and_round_trips():
    clicks = parse_clicks('[{"frame": 3, "x": 0.25, "y": 0.5, "positive": false}, [0, 0.1, 0.2]]')
    assert clicks == [Click(3, 0.25, 0.5, False), Click(0, 0.1, 0.2, True)]
    assert parse_clicks(dump_clicks(clicks)) == clicks
    assert parse_clicks("") == [] and parse_clicks(None) == []


@pytest.mark.parametrize("text", ["not json", '[{"x": 0.5}]', '[[0, 1.5, 0.5]]', '[[-1, 0.5, 0.5]]'])
def test_parse_refuses_bad_points(text):
    with pytest.raises(WanAnimateError):
        parse_clicks(text)


def test_click_at_uses_pixel_centres():
    assert click_at(2, 0, 0, 100, 50, True) == Click(2, 0.005, 0.01, True)
    assert click_at(0, 99, 49, 100, 50, False) == Click(0, 0.995, 0.99, False)


def test_prompts_scale_to_the_output_size_and_drop_frames_past_a_draft():
    clicks = [Click(0, 0.5, 0.25, True), Click(80, 0.1, 0.9, False)]
    prompts = to_point_prompts(clicks, (480, 832))
    assert [(p.frame, p.x, p.y, p.positive) for p in prompts] == [(0, 416.0, 120.0, True), (80, 83.2, 432.0, False)]
    assert len(to_point_prompts(clicks, (480, 832), num_frames=77)) == 1


def test_person_point_is_the_first_positive_click():
    clicks = [Click(4, 0.9, 0.9, False), Click(2, 0.5, 0.5, True), Click(1, 0.1, 0.1, True)]
    assert person_point(clicks, (100, 200)) == (2, 100.0, 50.0)
    assert person_point(clicks[:1], (100, 200)) is None


def test_draw_marks_only_the_clicks_of_the_shown_frame():
    frame = np.zeros((60, 80, 3), np.uint8)
    clicks = [Click(1, 0.25, 0.5, True), Click(2, 0.75, 0.5, False)]
    drawn = draw_clicks(frame, clicks, index=1)
    assert drawn[30, 20].any() and not drawn[30, 60].any()
    assert not frame.any()  # the frame itself is left alone
    negative = draw_clicks(frame, clicks, index=2)
    assert negative[28, 60, 0] > 200 > negative[28, 60, 1]  # red for "not the person", above its white bar


def test_read_frame_follows_trim_and_rate(tmp_path):
    video = write_test_video(tmp_path / "clip.mp4", counter_frames(30, 64, 96), 30.0)
    assert frame_index(read_frame(video, 0, fps=30.0, start=0.2)) == 6
    assert frame_index(read_frame(video, 3, fps=15.0)) == 6
    assert frame_index(read_frame(video, 500, fps=30.0)) == 29  # past the end: the last frame
    assert read_frame(video, 0, max_side=48).shape == (32, 48, 3)


def test_describe_clicks():
    assert "No points" in describe_clicks([])
    assert describe_clicks([Click(0, 0.1, 0.1), Click(5, 0.2, 0.2, False)]) == "2 points (1 on the person, 1 off) on frames 0, 5"
