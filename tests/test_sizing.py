"""Contract "Size": output size by area with sides floored to 16, and letterboxing."""

import numpy as np
import pytest

from wan_animate.errors import WanAnimateError
from wan_animate.preprocess.sizing import letterbox, letterbox_transform, output_size, resize_frame


@pytest.mark.parametrize(
    "height, width, resolution, expected",
    [
        # 720p, area 921600. 16:9: new_h = sqrt(921600 * 9 / 16) = 720, new_w = 921600 / 720 = 1280.
        (1080, 1920, "720p", (720, 1280)),
        # 9:16: new_h = sqrt(921600 * 16 / 9) = 1280, new_w = 720.
        (1920, 1080, "720p", (1280, 720)),
        # 1:1: sqrt(921600) = 960 on both sides.
        (1000, 1000, "720p", (960, 960)),
        # 480p, area 399360. 16:9: sqrt(399360 * 9/16) = 473.96 -> 464; 399360 / 473.96 = 842.6 -> 832.
        (1080, 1920, "480p", (464, 832)),
        (1920, 1080, "480p", (832, 464)),
        # 1:1: sqrt(399360) = 631.95 -> 624.
        (1000, 1000, "480p", (624, 624)),
        # 4:3 at 720p: sqrt(921600 * 3/4) = 831.4 -> 816; sqrt(921600 * 4/3) = 1108.5 -> 1104.
        (480, 640, "720p", (816, 1104)),
    ],
)
def test_output_size(height, width, resolution, expected):
    assert output_size(height, width, resolution) == expected


def test_output_size_default_is_720p():
    assert output_size(1080, 1920) == (720, 1280)


@pytest.mark.parametrize("height, width", [(333, 777), (1234, 567), (2160, 3840), (100, 100)])
def test_output_size_multiple_of_16_and_within_area(height, width):
    for resolution, area in (("720p", 1280 * 720), ("480p", 832 * 480)):
        new_h, new_w = output_size(height, width, resolution)
        assert new_h % 16 == 0 and new_w % 16 == 0
        assert new_h * new_w <= area
        # Aspect kept up to the flooring.
        assert abs(new_w / new_h - width / height) < 0.1 * width / height


def test_output_size_refuses_extreme_aspect_and_unknown_resolution():
    with pytest.raises(WanAnimateError):
        output_size(1, 100000)
    with pytest.raises(WanAnimateError):
        output_size(720, 1280, "1080p")


def test_letterbox_landscape_into_square_pads_top_and_bottom():
    image = np.full((100, 200, 3), 255, np.uint8)
    out = letterbox(image, (200, 200))
    assert out.shape == (200, 200, 3) and out.dtype == np.uint8
    # Fitted to the width: 200 x 100, padding (200 - 100) / 2 = 50 above and below.
    assert (out[:50] == 0).all() and (out[150:] == 0).all()
    assert (out[50:150] == 255).all()


def test_letterbox_portrait_pads_left_and_right():
    image = np.full((200, 100, 3), 200, np.uint8)
    out = letterbox(image, (100, 300))
    # Fitted to the height: width 100 * 100 / 200 = 50, padding (300 - 50) / 2 = 125 each side.
    assert (out[:, :125] == 0).all() and (out[:, 175:] == 0).all()
    assert (out[:, 125:175] == 200).all()


def test_letterbox_odd_padding_goes_to_the_bottom():
    image = np.full((100, 200, 3), 255, np.uint8)
    out = letterbox(image, (101, 200))
    # Fitted 100 rows, padding int(1 / 2) = 0 on top, the spare row at the bottom.
    assert (out[:100] == 255).all() and (out[100] == 0).all()


def test_letterbox_same_aspect_fills_everything():
    image = np.full((1080, 1920, 3), 7, np.uint8)
    out = letterbox(image, (720, 1280))
    assert (out == 7).all()


def test_letterbox_single_channel_and_float():
    mask = np.ones((50, 100), np.float32)
    out = letterbox(mask, (100, 100))
    assert out.shape == (100, 100) and out.dtype == np.float32
    assert out[:25].sum() == 0 and out[25:75].min() == 1


def test_letterbox_transform_maps_a_marker():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:50, 100:110] = 255  # centre (104.5, 44.5)
    out = letterbox(image, (300, 300))
    scale, offset_x, offset_y = letterbox_transform((100, 200), (300, 300))
    # Fitted to the width: scale 300 / 200 = 1.5, height 150, padding 75 on top.
    assert (scale, offset_x, offset_y) == (1.5, 0.0, 75.0)
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(xs.mean() - (104.5 * scale + offset_x)) < 1
    assert abs(ys.mean() - (44.5 * scale + offset_y)) < 1


def test_letterbox_transform_portrait():
    assert letterbox_transform((200, 100), (100, 300)) == (0.5, 125.0, 0.0)


def test_resize_frame():
    image = np.zeros((100, 200, 3), np.uint8)
    assert resize_frame(image, (100, 200)) is image
    assert resize_frame(image, (48, 64)).shape == (48, 64, 3)
    assert resize_frame(image, (400, 300), "bilinear").shape == (400, 300, 3)
