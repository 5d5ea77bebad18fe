"""Input components that hand the actions what the user sent, so the package's rules are the only ones applied.

Gradio's own components check and convert their input before an action runs, each with its own rule: `gr.Image`
opens and converts the photo with PIL (an unreadable file or a video then fails inside Gradio with a generic
error, transparency is dropped instead of composited on white, 16-bit greyscale is clipped), and sliders and
radios refuse values outside their range or choices with a sentence that names no setting (a slider's check also
lets NaN through). The subclasses here skip those steps: the photo arrives as the uploaded file, read by
`wan_animate.video.read_image` like everywhere else, and every number or choice arrives as sent and is checked by
the action with `wan_animate.validation`'s fields, whose sentence names the setting.

The page looks and behaves the same: each class is a template of the Gradio component it extends (same
front-end, same API description; a slider's range is its field's).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import gradio.utils
from gradio import processing_utils
from gradio.data_classes import ImageData

from ..validation import FloatField, IntField


class PhotoFile(gr.Image):
    """A `gr.Image` upload handed to the action as the uploaded file's path, never opened by Gradio.

    The preview on the page is the browser's; the client API's parameter is a file, as for `gr.Image`.
    """

    # Drawn by gr.Image's front-end. No __init__ of its own: Gradio describes a component to the page by the
    # parameters of its class's __init__.
    is_template = True

    def preprocess(self, payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # an API client may send the bytes inline
            return processing_utils.save_base64_to_cache(payload.url, self.GRADIO_CACHE, payload.orig_name)
        # Gradio refuses a path that was not uploaded only for a payload that carries FileData's "meta" key, which
        # ImageData (unlike FileData) does not require: without this check a client could name any server file.
        if not payload.path or not gradio.utils.is_in_or_equal(payload.path, self.GRADIO_CACHE):
            raise gr.Error("Upload the photo itself: the app reads only files uploaded to it.", print_exception=False)
        return payload.path


class Slider(gr.Slider):
    """A `gr.Slider` whose value reaches the action unchecked (the action checks it with its field)."""

    is_template = True

    @classmethod
    def for_field(cls, field: IntField | FloatField, **kwargs: Any) -> Slider:
        """A slider over ``field``'s range (whole numbers for an `IntField`, which the API description says)."""
        assert field.low is not None and field.high is not None, f"{field.name} needs a range to be a slider"
        return cls(field.low, field.high, precision=0 if isinstance(field, IntField) else None, **kwargs)

    def preprocess(self, payload: Any) -> Any:
        return payload


class Radio(gr.Radio):
    """A `gr.Radio` whose value reaches the action unchecked (the action says what the choices are)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class Dropdown(gr.Dropdown):
    """A single-choice `gr.Dropdown` whose value reaches the action unchecked."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


__all__ = ["Dropdown", "PhotoFile", "Radio", "Slider"]
