"""Wan2.2-Animate: the Gradio app (a Hugging Face Space, or ``python app.py`` locally).

The page and its events. Every button calls an action of `wan_animate.space.Studio`, which is also a named API
endpoint (for `gradio_client`) and an MCP tool, described by its docstring.

    python app.py --help
    python app.py --demo      # no GPU, no downloads: tiny random models on the CPU (the videos are noise)
    python app.py --gpus 2    # every job split over 2 GPUs (or: torchrun --standalone --nproc-per-node 2 app.py)
"""

# `spaces` first: on ZeroGPU it must patch CUDA before torch is imported (elsewhere `spaces.GPU` is a no-op).
import spaces  # noqa: F401  isort: skip

import argparse
import logging
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from wan_animate import validation
from wan_animate.jobs import DEFAULT_CLEAN_INTERVAL_SECONDS, DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_BYTES
from wan_animate.models import DEFAULT_MODEL_ID
from wan_animate.parallel import ParallelContext
from wan_animate.picker import describe_clicks
from wan_animate.presets import DEFAULT_FAST_LORA, available_presets, get_preset
from wan_animate.space import PREVIEWS, AppConfig, Studio
from wan_animate.space.components import Dropdown, PhotoFile, Radio, Slider
from wan_animate.space.ranks import (
    GPUS_VARIABLE,
    follow_leader,
    join_ranks,
    lead_followers,
    log_prefix,
    relaunch_on_gpus,
)
from wan_animate.space.zerogpu import on_zerogpu
from wan_animate.video import DEFAULT_MAX_SECONDS

ASSETS = Path(__file__).resolve().parent / "assets"
ON_ZEROGPU = on_zerogpu()
INTRO = (
    "# Wan2.2-Animate\nGive it **one photo of a character** and **a driving video**. Press **Extract** to see what the "
    "model will follow (skeleton, face crops, mask) and a quality report before any GPU minutes are spent, then "
    "**Generate**."
)
DEMO_NOTICE = (
    "**Demo mode:** tiny random models on the CPU, at 96×96. Every step and screen is the real one, but the models "
    "are untrained: the skeleton, masks and generated videos are **noise**."
)
GOOD_INPUTS = (
    "**Good inputs:** one clearly visible person, facing the camera in the first frame, whole body in view; "
    f"a clip of at most {DEFAULT_MAX_SECONDS:g} s (trim longer ones). A sharp, front-facing photo of the character."
)
PREVIEW_LABELS = {
    "skeleton": "Skeleton the model follows",
    "faces": "Face crops",
    "mask": "Mask (regenerated area)",
    "background": "Background the model keeps",
}
# The cleaning flags, checked by the package's rule for numbers.
MAX_JOB_AGE = validation.FloatField("--max-job-age (hours)", 0.0, None)
MAX_JOB_GB = validation.FloatField("--max-job-gb", 0.0, None)
CLEAN_EVERY = validation.FloatField("--clean-every (minutes)", 0.0, None, low_open=True)
KEEP_RESULTS = validation.IntField("--keep-results", 1, 100)
MODE_TEXT = {
    "animate": "The character in the photo performs the video's motion and facial expressions, in the photo's setting.",
    "replace": "The character takes the place of the person in the video, lit like the scene.",
}


@dataclass
class _Tab:
    """The components of one tab that events read and write."""

    mode: str
    photo: PhotoFile
    video: gr.Video
    start: gr.Number
    end: gr.Number
    video_line: gr.Markdown
    frame_index: gr.Slider
    picker: gr.Image
    picker_frame: gr.State
    point_label: gr.Radio
    points: gr.Textbox
    points_line: gr.Markdown
    clear_points: gr.Button
    resolution: gr.Radio
    fps: gr.Radio
    preset: gr.Radio
    steps: gr.Slider
    seed: gr.Number
    guidance: gr.Slider
    overlap: gr.Radio
    color_match: gr.Checkbox
    step_cache: gr.Dropdown
    extract: gr.Button
    generate: gr.Button
    draft: gr.Button
    oneshot: gr.Button
    stop: gr.Button
    status: gr.Markdown
    estimate: gr.Markdown
    previews: list[gr.Video]
    report: gr.Markdown
    report_json: gr.JSON
    job_id: gr.Textbox
    result: gr.Video
    side_by_side: gr.Video
    summary: gr.Markdown
    details: gr.JSON
    mode_inputs: list = field(default_factory=list)
    mask_inputs: list = field(default_factory=list)
    relight_inputs: list = field(default_factory=list)

    @property
    def results(self) -> list:
        """A generation's outputs, in the order of the generation endpoints' returns."""
        return [self.result, self.side_by_side, self.summary, self.details]


def _build_tab(studio: Studio, mode: str) -> _Tab:
    replace = mode == "replace"
    gr.Markdown(f"{MODE_TEXT[mode]}\n\n{GOOD_INPUTS}")
    # The example comes first (on a phone it would be far below the fold); the inputs it fills are placed after it.
    # The settings' components hand their values to the actions as sent (`wan_animate.space.components`): the
    # photo as the uploaded file, numbers and choices unchecked, so the package's rules are the only ones applied.
    photo = PhotoFile(label="Character photo", type="filepath", sources=["upload", "clipboard"], height=360, elem_id=f"{mode}-photo", render=False)
    video = gr.Video(label="Video (its person is replaced)" if replace else "Driving video", sources=["upload"], height=360, elem_id=f"{mode}-video", render=False)
    gr.Examples(
        examples=[[str(ASSETS / "character.jpg"), str(ASSETS / "dance.mp4")]],
        inputs=[photo, video],
        example_labels=["Drawn character + dancing figure, 4 s"],
        label="Example (drawn with OpenCV, see assets/LICENSES.md): click to fill the photo and the video",
        elem_id=f"{mode}-examples",
    )
    with gr.Row():
        photo.render()
        video.render()
    with gr.Row():
        start = gr.Number(label="Start (s)", value=0.0, step=0.1, elem_id=f"{mode}-start")
        end = gr.Number(label="End (s, 0 = to the end)", value=0.0, step=0.1)
        video_line = gr.Markdown()
    with gr.Accordion(
        "Points: choose the person, fix the mask" if replace else "Choose the person (only if several are in view)",
        open=replace,
    ):
        gr.Markdown(
            "Click on the person (+) or on what is not the person (−), on any frame, then **Extract** again. "
            "After an extraction the frame shows the mask."
            if replace
            else "Click on the person to follow, then **Extract**."
        )
        with gr.Row():
            with gr.Column(scale=3):
                picker = gr.Image(label="Frame (click to add a point)", interactive=False, type="numpy", height=360, elem_id=f"{mode}-picker")
                frame_index = gr.Slider(label="Frame", minimum=0, maximum=1, step=1, value=0, elem_id=f"{mode}-frame")
            with gr.Column(scale=1):
                point_label = gr.Radio(["Person (+)", "Not the person (−)"], value="Person (+)", label="A click adds", visible=replace, elem_id=f"{mode}-point-label")
                points_line = gr.Markdown(describe_clicks([]), elem_id=f"{mode}-points")
                clear_points = gr.Button("Clear points", size="sm")
                points = gr.Textbox(label="Points (JSON)", value="", visible=False)
        picker_frame = gr.State(None)
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            resolution = Radio(["720p", "480p"], value="720p", label="Resolution")
            fps = Radio([("30 fps", "30"), ("Source rate", "source")], value="30", label="Frame rate")
            presets = available_presets(studio.fast_available)
            preset = Radio([(p.label, p.name) for p in presets], value=studio.default_preset, label="Preset",
                           info=None if studio.fast_available else "Fast needs a few-step LoRA (--fast-lora).")
        with gr.Row():
            steps = Slider.for_field(validation.STEPS, value=get_preset(studio.default_preset, studio.fast_available).steps, step=1, label="Steps", elem_id=f"{mode}-steps")
            seed = gr.Number(value=-1, step=1, label="Seed (-1 = random)", elem_id=f"{mode}-seed")
            guidance = Slider.for_field(validation.GUIDANCE, value=1.0, step=0.5, label="Guidance (1 = off; above 1 doubles the time)")
            overlap = Radio([1, 5], value=1, label="Overlap frames between segments")
            step_cache = Dropdown(
                [("Off", "none"), ("First-block cache", "first_block"), ("TaylorSeer (lite)", "taylorseer")],
                value="none", label="Step cache (experimental)",
                # Each GPU would skip different steps and they would drift apart (`parallel.share_job` refuses it).
                interactive=studio.parallel is None,
                info="Skips parts of some steps: ~1.6x faster at 480p; its quality cost is not known yet. Off in the fast preset."
                if studio.parallel is None else "Off with several GPUs: each would skip different steps.",
            )
        with gr.Row():
            color_match = gr.Checkbox(label="Colour consistency across segments", value=False)
            mode_inputs, relight_inputs, mask_inputs = [], [], []
            if replace:
                relight = gr.Checkbox(label="Relighting (the character takes the scene's light)", value=True)
                relight_weight = Slider.for_field(validation.RELIGHT_WEIGHT, value=1.0, step=0.05, label="Relighting weight")
                relight_inputs = [relight, relight_weight]
            else:
                retarget = gr.Checkbox(label="Retarget to the character's proportions", value=False)
                mode_inputs = [retarget]
        if replace:
            with gr.Row():
                mask_inputs = [
                    Slider.for_field(validation.MASK_KERNEL, value=7, step=2, label="Mask dilation kernel (px)", elem_id=f"{mode}-mask-kernel"),
                    Slider.for_field(validation.MASK_ITERATIONS, value=3, step=1, label="Mask dilation iterations", elem_id=f"{mode}-mask-iterations"),
                    Slider.for_field(validation.BLOCKIFY, value=1, step=1, label="Blockify grid (1 = whole box)", elem_id=f"{mode}-blockify"),
                ]
    # Widths: one row at 1280 px with no label wrapped; on a phone, two short buttons or one long one per line.
    with gr.Row(elem_id=f"{mode}-actions"):
        extract = gr.Button("1. Extract", variant="secondary", elem_id=f"{mode}-extract", min_width=140)
        generate = gr.Button("2. Generate", variant="primary", elem_id=f"{mode}-generate", min_width=140)
        draft = gr.Button("Draft: 480p, 1st segment", elem_id=f"{mode}-draft", scale=2, min_width=280)
        oneshot = gr.Button("One click: extract + generate", elem_id=f"{mode}-oneshot", scale=2, min_width=300)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{mode}-stop", min_width=100)
    status = gr.Markdown(elem_id=f"{mode}-status")
    estimate = gr.Markdown(elem_id=f"{mode}-estimate")
    with gr.Row():
        previews = [
            gr.Video(label=PREVIEW_LABELS[name], elem_id=f"{mode}-{name}", interactive=False, height=320)
            for name in PREVIEWS[mode]
        ]
    report = gr.Markdown(label="Quality report", elem_id=f"{mode}-report")
    with gr.Accordion("Report (JSON)", open=False):
        report_json = gr.JSON(label="Report (JSON)")
    job_id = gr.Textbox(visible=False, label="job_id")
    with gr.Row():
        driving = "video" if replace else "driving video"
        result = gr.Video(label="Result", interactive=False, elem_id=f"{mode}-result", buttons=["download"], height=480)
        side_by_side = gr.Video(label=f"Side by side ({driving} | result)", interactive=False, elem_id=f"{mode}-side", buttons=["download"], height=480)
    summary = gr.Markdown(label="Summary", elem_id=f"{mode}-summary")
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.JSON(label="Details (JSON)")
    return _Tab(
        mode=mode, photo=photo, video=video, start=start, end=end, video_line=video_line, frame_index=frame_index,
        picker=picker, picker_frame=picker_frame, point_label=point_label, points=points, points_line=points_line,
        clear_points=clear_points, resolution=resolution, fps=fps, preset=preset, steps=steps, seed=seed,
        guidance=guidance, overlap=overlap, color_match=color_match, step_cache=step_cache, extract=extract,
        generate=generate, draft=draft, oneshot=oneshot, stop=stop, status=status, estimate=estimate, previews=previews, report=report,
        report_json=report_json, job_id=job_id, result=result, side_by_side=side_by_side, summary=summary,
        details=details, mode_inputs=mode_inputs, mask_inputs=mask_inputs, relight_inputs=relight_inputs,
    )


def _wire_tab(studio: Studio, tab: _Tab, runtime: gr.Markdown) -> None:
    replace = tab.mode == "replace"
    name = "replacement" if replace else "animation"
    verb = "replace" if replace else "animate"
    private = dict(api_visibility="private", queue=False)
    gpu = dict(concurrency_id="gpu", concurrency_limit=studio.config.gpu_concurrency)
    trim = [tab.start, tab.end]
    generation = [tab.preset, tab.steps, tab.seed, tab.guidance, tab.overlap, tab.color_match, *tab.relight_inputs, tab.step_cache]
    picker_inputs = [tab.video, tab.job_id, tab.frame_index, *trim, tab.fps, tab.points]

    def no_job() -> str:
        return ""

    def no_result() -> tuple:
        """The result panes emptied and the status line cleared."""
        return (*(None,) * len(tab.results), "")

    # The previews and the report always show the job the page holds: a new job fills them, no job empties them.
    tab.job_id.change(studio.job_previews, [gr.State(tab.mode), tab.job_id], [*tab.previews, tab.report, tab.report_json], **private)

    # Picker: a new video, trim or frame rate resets the points (their frame indices would point elsewhere).
    def reset_points() -> tuple[str, str, str]:
        return "", describe_clicks([]), ""

    for trigger in (tab.video.change, tab.start.submit, tab.end.submit, tab.fps.change):
        (
            trigger(studio.video_info, [tab.video, *trim, tab.fps], [tab.video_line, tab.frame_index, tab.end], **private)
            .then(reset_points, None, [tab.points, tab.points_line, tab.job_id], **private)
            .then(studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private")
        )
    tab.frame_index.release(studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private")
    tab.picker.select(
        studio.add_point,
        [tab.picker_frame, tab.frame_index, tab.points, tab.point_label, gr.State(not replace)],
        [tab.points, tab.picker, tab.points_line],
        **private,
    )
    tab.clear_points.click(reset_points, None, [tab.points, tab.points_line, tab.status], **private).then(
        studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private"
    )
    tab.preset.change(lambda preset: get_preset(preset, studio.fast_available).steps, tab.preset, tab.steps, **private)

    # Extract makes a new job (the old one's previews go at once, so a failed extraction leaves none shown);
    # Generate starts from the job, with the previous result cleared.
    extract_inputs = [tab.photo, tab.video, *trim, tab.resolution, tab.fps, *tab.mode_inputs, tab.points, *tab.mask_inputs]
    (
        tab.extract.click(no_job, None, tab.job_id, **private)
        .then(
            studio.extract_replacement if replace else studio.extract_animation, extract_inputs,
            [*tab.previews, tab.report, tab.report_json, tab.job_id], api_name=f"extract_{name}",
            concurrency_id="preprocess", concurrency_limit=studio.config.preprocess_concurrency,
        )
        .then(studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private")
    )
    # A generation's outputs come after every segment (the video grows); the previous result and Stop's last
    # words go first, so nothing on the page passes for this job's result before it has one.
    generate_event = tab.generate.click(no_result, None, [*tab.results, tab.status], **private).then(
        studio.replace if replace else studio.animate, [tab.job_id, *generation], tab.results, api_name=verb, **gpu
    )

    # One click and Draft make their own job: its id comes as soon as it is extracted, then the growing result.
    def no_job_nor_result() -> tuple:
        return (*no_result(), no_job())

    draft_inputs = [tab.photo, tab.video, *trim, tab.fps, *tab.mode_inputs, tab.points, *tab.mask_inputs]
    oneshot_event = tab.oneshot.click(no_job_nor_result, None, [*tab.results, tab.status, tab.job_id], **private).then(
        studio.replace_oneshot if replace else studio.animate_oneshot, [*extract_inputs, *generation],
        [*tab.results, tab.job_id], api_name=f"{verb}_oneshot", **gpu,
    )
    draft_event = tab.draft.click(no_job_nor_result, None, [*tab.results, tab.status, tab.job_id], **private).then(
        studio.replace_draft if replace else studio.animate_draft, [*draft_inputs, *generation],
        [*tab.results, tab.job_id], api_name=f"{verb}_draft", **gpu,
    )
    for event in (generate_event, oneshot_event, draft_event):
        event.then(studio.runtime_markdown, None, runtime, api_visibility="private")

    # Stop cancels the running event (the job stops after its current step, keeping its finished segments) and
    # the queued ones, then says how far the job got (queued: it waits for the job, on its own concurrency).
    def stop(request: gr.Request):
        yield from studio.stop(tab.mode, request)

    tab.stop.click(
        stop, None, tab.status, cancels=[generate_event, oneshot_event, draft_event], api_visibility="private",
        concurrency_id=f"stop-{tab.mode}", concurrency_limit=None, show_progress="hidden",
    )

    # Before a job starts: the GPU time it will take (on ZeroGPU: in how many calls, and whether a quota covers it).
    gr.on(
        [tab.job_id.change, tab.video.change, tab.start.submit, tab.end.submit, tab.fps.change, tab.resolution.change,
         tab.preset.change, tab.steps.release, tab.guidance.release, tab.overlap.change],
        studio.gpu_estimate,
        [tab.job_id, tab.video, *trim, tab.fps, tab.resolution, tab.preset, tab.steps, tab.guidance, tab.overlap],
        tab.estimate, **private,
    )


def build_demo(config: AppConfig, parallel: ParallelContext | None = None) -> gr.Blocks:
    """The page: title, runtime line, then the Animation and Replacement tabs, each with its example first.

    ``parallel``: rank 0's place among several processes (`wan_animate.space.ranks`); its generations use them all.
    """
    studio = Studio(config, parallel)
    # Gradio's copies of uploads, previews and results are deleted on the jobs' timer and age limit.
    copies_age = int(config.max_job_age or DEFAULT_MAX_AGE_SECONDS)
    with gr.Blocks(title="Wan2.2-Animate", delete_cache=(int(config.clean_interval), copies_age)) as demo:
        gr.Markdown(INTRO)
        if config.demo:
            gr.Markdown(DEMO_NOTICE, elem_id="demo-notice")
        runtime = gr.Markdown(studio.runtime_markdown(), elem_id="runtime")
        with gr.Tabs():
            for mode, title in (("animate", "Animation"), ("replace", "Replacement")):
                with gr.Tab(title, id=mode):
                    _wire_tab(studio, _build_tab(studio, mode), runtime)
        demo.load(studio.runtime_markdown, None, runtime, api_visibility="private")
    demo.queue(max_size=config.max_queue, default_concurrency_limit=config.gpu_concurrency)
    demo.studio = studio  # type: ignore[attr-defined]  (tests and embedding code reach the actions)
    return demo


def parse_args(argv: list[str] | None = None) -> tuple[AppConfig, argparse.Namespace]:
    """Command line flags (each with an environment variable for Spaces) into an `AppConfig`."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Wan2.2-Animate app: character photo + driving video -> video.")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"), help="Address to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="Port (default 7860).")
    parser.add_argument("--share", action="store_true", help="Also serve on a public gradio.live link.")
    parser.add_argument("--demo", action="store_true", help="Try the page with no GPU and no downloads: tiny random models (built once, cached), on the CPU, at 96x96. The videos are noise. Model flags are ignored.")
    parser.add_argument("--model", default=env("WAN_ANIMATE_MODEL", DEFAULT_MODEL_ID), help="Diffusers checkpoint: hub id or local folder (env WAN_ANIMATE_MODEL).")
    parser.add_argument("--detector", default=env("WAN_ANIMATE_DETECTOR"), help="Person detector: hub id or folder (env WAN_ANIMATE_DETECTOR).")
    parser.add_argument("--pose-model", default=env("WAN_ANIMATE_POSE_MODEL"), help="ViTPose whole-body ONNX: hub id, folder or .onnx file (env WAN_ANIMATE_POSE_MODEL).")
    parser.add_argument("--sam2", default=env("WAN_ANIMATE_SAM2"), help="SAM2 video model: hub id or folder (env WAN_ANIMATE_SAM2).")
    parser.add_argument("--memory-mode", default=env("WAN_ANIMATE_MEMORY_MODE", "auto"), choices=["auto", "none", "model", "group", "sequential"], help="GPU memory mode (env WAN_ANIMATE_MEMORY_MODE).")
    parser.add_argument("--dtype", default=env("WAN_ANIMATE_DTYPE", "auto"), choices=["auto", "bfloat16", "float16", "float32"], help="Compute dtype.")
    parser.add_argument("--fp8", action="store_true", default=env("WAN_ANIMATE_FP8", "") == "1", help="Store transformer weights in fp8 (env WAN_ANIMATE_FP8=1).")
    parser.add_argument("--aot-blocks", default=env("WAN_ANIMATE_AOT_BLOCKS"), help="Run the transformer's blocks through an ahead-of-time compiled package: a .pt2 file or owner/repo::file.pt2 (wan_animate.aot; env WAN_ANIMATE_AOT_BLOCKS).")
    parser.add_argument("--allow-cpu", action="store_true", default=env("WAN_ANIMATE_ALLOW_CPU", "") == "1", help="Allow running without CUDA (only for tiny test models).")
    parser.add_argument("--fast-lora", default=env("WAN_ANIMATE_FAST_LORA", DEFAULT_FAST_LORA), help=f"Few-step LoRA (hub/repo::file.safetensors or a file) for the fast preset and drafts; 'none' switches the fast preset off (default {DEFAULT_FAST_LORA}; env WAN_ANIMATE_FAST_LORA).")
    parser.add_argument("--relight-lora", default=env("WAN_ANIMATE_RELIGHT_LORA"), help="Local relighting_lora.ckpt (or folder / hub id) instead of the hub file (env WAN_ANIMATE_RELIGHT_LORA).")
    parser.add_argument("--gpu-concurrency", type=int, default=int(env("WAN_ANIMATE_GPU_CONCURRENCY", "1")), help="GPU jobs at once (default 1).")
    parser.add_argument("--preprocess-concurrency", type=int, default=int(env("WAN_ANIMATE_PREPROCESS_CONCURRENCY", "2")), help="Extractions at once (default 2).")
    parser.add_argument("--max-queue", type=int, default=int(env("WAN_ANIMATE_MAX_QUEUE", "20")), help="Longest queue (default 20).")
    parser.add_argument("--work-dir", type=Path, default=env("WAN_ANIMATE_WORK_DIR"), help="Folder for job files, never served (default: wan_animate_jobs in the temp folder; it must be under the current or the temp folder, outside Gradio's upload folder; env WAN_ANIMATE_WORK_DIR).")
    parser.add_argument("--max-job-age", type=MAX_JOB_AGE.parse, default=env("WAN_ANIMATE_MAX_JOB_AGE_HOURS", f"{DEFAULT_MAX_AGE_SECONDS / 3600:g}"), metavar="HOURS", help=f"Delete jobs unused for longer; 0 = no age limit (default {DEFAULT_MAX_AGE_SECONDS / 3600:g}; env WAN_ANIMATE_MAX_JOB_AGE_HOURS).")
    parser.add_argument("--max-job-gb", type=MAX_JOB_GB.parse, default=env("WAN_ANIMATE_MAX_JOB_GB", f"{DEFAULT_MAX_BYTES / 2**30:g}"), metavar="GIB", help=f"Delete the least recently used jobs beyond this size; 0 = no size limit (default {DEFAULT_MAX_BYTES / 2**30:g}; env WAN_ANIMATE_MAX_JOB_GB).")
    parser.add_argument("--clean-every", type=CLEAN_EVERY.parse, default=env("WAN_ANIMATE_CLEAN_MINUTES", f"{DEFAULT_CLEAN_INTERVAL_SECONDS / 60:g}"), metavar="MINUTES", help=f"Minutes between cleanings of the jobs folder (default {DEFAULT_CLEAN_INTERVAL_SECONDS / 60:g}; env WAN_ANIMATE_CLEAN_MINUTES).")
    parser.add_argument("--keep-results", type=KEEP_RESULTS.parse, default=env("WAN_ANIMATE_KEEP_RESULTS", "1"), metavar="N", help="Results each job keeps; older ones are deleted (default 1; env WAN_ANIMATE_KEEP_RESULTS).")
    parser.add_argument("--preload", action=argparse.BooleanOptionalAction, default=ON_ZEROGPU, help="Load the pipeline and its LoRAs at start (default: on ZeroGPU only; always with several GPUs).")
    parser.add_argument("--gpus", type=int, default=int(env(GPUS_VARIABLE, "1")), metavar="N", help=f"Split every job over N GPUs of this machine: starts N processes under torchrun, one per GPU (the same as torchrun --standalone --nproc-per-node N app.py; env {GPUS_VARIABLE}). Without CUDA only with --allow-cpu (CPU processes, tiny test models).")
    args = parser.parse_args(argv)
    config = AppConfig(
        model=args.model, detector=args.detector, pose_model=args.pose_model, sam2=args.sam2,
        memory_mode=args.memory_mode, dtype=args.dtype, fp8=args.fp8, aot_blocks=args.aot_blocks or None, allow_cpu=args.allow_cpu,
        fast_lora=None if args.fast_lora.lower() in ("", "none") else args.fast_lora, relight_lora=args.relight_lora, gpu_concurrency=max(1, args.gpu_concurrency),
        preprocess_concurrency=max(1, args.preprocess_concurrency), max_queue=max(1, args.max_queue),
        work_dir=args.work_dir, preload=args.preload, zerogpu=ON_ZEROGPU, max_job_age=args.max_job_age * 3600 or None,
        max_job_bytes=int(args.max_job_gb * 2**30) or None, clean_interval=args.clean_every * 60, keep_results=args.keep_results,
    )
    return config, args


def main(argv: list[str] | None = None) -> None:
    """Start the app (``python app.py --help``). Under torchrun with several processes process 0 serves the page
    and the others follow its generations (`wan_animate.space.ranks`)."""
    logging.basicConfig(level=logging.INFO, format=f"{log_prefix()}%(levelname)s %(name)s: %(message)s")
    config, args = parse_args(argv)
    relaunch_on_gpus(args.gpus, __file__, sys.argv[1:] if argv is None else argv, config)
    with ExitStack() as stack:
        if args.demo:
            from wan_animate.demo import demo_models, demo_sizes

            config = config.with_tiny_models(demo_models())
            stack.enter_context(demo_sizes())
        parallel = stack.enter_context(join_ranks(config))
        if parallel is not None and parallel.is_follower:
            follow_leader(config, parallel)
            return
        demo = build_demo(config, parallel)
        stack.enter_context(lead_followers(parallel, demo.studio))
        if config.preload or parallel is not None:
            demo.studio.preload()  # with several GPUs every process loads at start, the followers too
        # No allowed_paths: the jobs folder is never served; the page gets Gradio's copies of what it shows (the
        # previews, the result, and the growing video after each segment).
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, mcp_server=True)


if __name__ == "__main__":
    main()
