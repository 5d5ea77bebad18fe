"""The page in a real browser (Playwright driving Debian's chromium), as a visitor uses it, in both tabs: upload,
Extract (previews play), Generate, Draft and One click (previews and result play, progress labelled), a failed
extraction leaves nothing stale, a click changes the Replacement mask, and the page at phone width.
Screenshots go to tests/artifacts/ (git-ignored).

The tests of a module share one page and run in order, each starting from where the one before left the page.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from wan_animate.space import PREVIEWS

pytest_plugins = ["tests.e2e_fixtures"]  # the served app, tiny models and media fixtures


ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
LONG = 240_000  # ms: an extraction or a generation on 2 CPU cores

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

PLAYS = """async (selector) => {
    const video = document.querySelector(selector + ' video');
    if (!video) return {found: false};
    for (let i = 0; i < 100 && video.readyState < 2; i++) await new Promise(r => setTimeout(r, 100));
    const ready = video.readyState;
    video.muted = true;  // autoplay rules allow muted playback without a user gesture
    await video.play();
    const before = video.currentTime;
    for (let i = 0; i < 50 && video.currentTime <= before; i++) await new Promise(r => setTimeout(r, 100));
    const after = video.currentTime;
    video.pause();
    return {found: true, ready, before, after, duration: video.duration, width: video.videoWidth};
}"""

RECORD_PROGRESS = """() => {
    // Every text the progress bars show from now on (Gradio draws one per output while an event runs).
    window.progressSeen = [];
    const seen = () => {
        for (const level of document.querySelectorAll('.progress-level-inner')) {
            const text = level.innerText.trim();
            if (text && window.progressSeen[window.progressSeen.length - 1] !== text) window.progressSeen.push(text);
        }
    };
    new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""

FIRST_FRAME = """async (selector) => {
    const video = document.querySelector(selector + ' video');
    for (let i = 0; i < 100 && video.readyState < 2; i++) await new Promise(r => setTimeout(r, 100));
    if (video.currentTime !== 0) {
        video.currentTime = 0;
        await new Promise(r => video.addEventListener('seeked', r, {once: true}));
    }
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext('2d');
    context.drawImage(video, 0, 0);
    return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


@pytest.fixture(scope="module")
def browser(served_app):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):  # an earlier run's screenshot could hide a missing one
        old.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, served_app):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(served_app)
    page.get_by_role("heading", name="Wan2.2-Animate").wait_for()
    page.evaluate(RECORD_PROGRESS)
    return page


def _upload(page, mode: str, photo: Path, video: Path) -> None:
    page.locator(f"#{mode}-photo input[type=file]").set_input_files(str(photo))
    page.locator(f"#{mode}-video input[type=file]").set_input_files(str(video))
    page.locator(f"#{mode}-video video").wait_for(timeout=30_000)


def _src(page, selector: str) -> str | None:
    video = page.locator(f"{selector} video")
    return video.get_attribute("src") if video.count() else None


def _wait_for_video(page, selector: str) -> None:
    page.wait_for_function(
        "(selector) => { const video = document.querySelector(selector + ' video'); return video && video.src; }",
        arg=selector,
        timeout=LONG,
    )


def _wait_for_no_video(page, selector: str) -> None:
    page.wait_for_function("(selector) => !document.querySelector(selector + ' video')", arg=selector, timeout=LONG)


def _job(page, mode: str) -> str | None:
    """The job id the report names (each extraction makes a new job)."""
    match = re.search(r"Job (\S+)", page.locator(f"#{mode}-report").inner_text())
    return match.group(1) if match else None


def _wait_for_extraction(page, mode: str, previous_job: str | None = None) -> str:
    """After a click that makes a job: the previous job's previews go at once; wait until the report names the
    new job (while an extraction runs, the report only shows its progress). Returns the new job id.

    Video sources can't tell two jobs apart: the page's files are served by content hash, and two jobs can have
    the very same preview (face crops don't depend on the resolution; a mask from the same clicks is the same).
    """
    _wait_for_no_video(page, f"#{mode}-skeleton")
    page.wait_for_function(
        """([selector, previous]) => {
            const match = document.querySelector(selector).innerText.match(/Job (\\S+)/);
            return match && match[1] !== previous;
        }""",
        arg=[f"#{mode}-report", previous_job],
        timeout=LONG,
    )
    return _job(page, mode)


def _assert_plays(page, selector: str) -> dict:
    state = page.evaluate(PLAYS, selector)
    assert state["found"] and state["ready"] >= 2, state
    assert state["after"] > state["before"], state
    return state


def _assert_previews_play(page, mode: str) -> None:
    """Every preview pane of ``mode`` shows a video that plays, and the report is there."""
    for name in PREVIEWS[mode]:
        _wait_for_video(page, f"#{mode}-{name}")
        _assert_plays(page, f"#{mode}-{name}")
    assert "Person found" in page.locator(f"#{mode}-report").inner_text()


def _progress_seen(page) -> list[str]:
    """The progress texts shown since the last call."""
    return page.evaluate("() => window.progressSeen.splice(0)")


def _set_slider(page, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box (opening the Settings accordion first if it is closed)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    if not box.is_visible():
        page.locator("button.label-wrap", has_text="Settings").locator("visible=true").first.click()
    box.fill(str(value))
    box.press("Tab")


def _run_one_shot(page, mode: str, button: str) -> str:
    """Press Draft or One click after an earlier run: the old job and result go at once, then the new job's
    previews and its result come and play. Returns the new job id."""
    previous_job = _job(page, mode)
    assert previous_job and _src(page, f"#{mode}-result")
    _progress_seen(page)
    page.locator(f"#{mode}-{button}").click()
    _wait_for_no_video(page, f"#{mode}-result")
    job = _wait_for_extraction(page, mode, previous_job)
    _assert_previews_play(page, mode)
    _wait_for_video(page, f"#{mode}-side")  # the side-by-side comes with the finished result (the video grows before)
    _assert_plays(page, f"#{mode}-result")
    _assert_plays(page, f"#{mode}-side")
    assert _job(page, mode) == job  # the result belongs to the job whose previews are shown
    seen = _progress_seen(page)
    assert any(text.startswith("Estimating pose") for text in seen), seen
    assert any(text.startswith("Segment 1/1") for text in seen), seen
    return job


# -- Animation ------------------------------------------------------------------------------------------


def test_animation_extract_preview_generate(page, e2e_media):
    page.screenshot(path=str(ARTIFACTS / "00_start.png"), full_page=True)
    assert "CPU" in page.locator("#runtime").inner_text()
    assert "noise" in page.locator("#demo-notice").inner_text()
    _upload(page, "animate", e2e_media["photo"], e2e_media["short_video"])
    page.locator("#animate-extract").click()
    _wait_for_extraction(page, "animate")
    _assert_previews_play(page, "animate")
    page.screenshot(path=str(ARTIFACTS / "01_animation_extracted.png"), full_page=True)

    page.locator("#animate-stop").click()  # nothing runs yet: Stop says so
    page.get_by_text("Nothing is being generated.").wait_for(timeout=30_000)
    _set_slider(page, "animate-steps", 2)
    _progress_seen(page)
    page.locator("#animate-generate").click()
    _wait_for_video(page, "#animate-side")
    state = _assert_plays(page, "#animate-result")
    assert state["duration"] == pytest.approx(20 / 30, abs=0.1)
    assert "Seed" in page.locator("#animate-summary").inner_text()
    seen = _progress_seen(page)
    assert any(text.startswith("Segment 1/1 · step ") for text in seen), "\n".join(seen)
    page.screenshot(path=str(ARTIFACTS / "02_animation_result.png"), full_page=True)


def test_animation_failed_extraction_leaves_no_stale_job(page):
    assert _job(page, "animate")
    start = page.locator("#animate-start input")
    start.fill("100")  # past the clip's end (typed without Enter: Enter would reset the job by itself)
    page.locator("#animate-extract").click()
    page.get_by_text("no video frames in the chosen range").first.wait_for(timeout=LONG)
    assert _job(page, "animate") is None  # the panes show Gradio's error badge, and no report
    assert "Person found" not in page.locator("#animate-report").inner_text()
    for name in PREVIEWS["animate"]:
        assert _src(page, f"#animate-{name}") is None
    page.screenshot(path=str(ARTIFACTS / "03_animation_failed_extraction.png"), full_page=True)
    start.fill("0")
    page.locator("#animate-generate").click()  # no job left to generate from
    page.get_by_text("press Extract first").first.wait_for(timeout=LONG)


def test_animation_draft_shows_previews_and_result(page):
    page.locator("#animate-extract").click()  # an extraction and a result to replace
    _wait_for_extraction(page, "animate")
    page.locator("#animate-generate").click()
    _wait_for_video(page, "#animate-side")
    _run_one_shot(page, "animate", "draft")
    page.screenshot(path=str(ARTIFACTS / "04_animation_draft.png"), full_page=True)


def test_animation_one_click_shows_previews_and_result(page):
    _run_one_shot(page, "animate", "oneshot")
    page.screenshot(path=str(ARTIFACTS / "05_animation_one_click.png"), full_page=True)


RECORD_RESULTS = """(mode) => {
    // Every (summary, result video, side-by-side video) the result panes show from now on.
    window.resultsSeen = [];
    const src = (id) => { const video = document.querySelector(`#${mode}-${id} video`); return video ? video.src : null; };
    const seen = () => {
        const state = [document.querySelector(`#${mode}-summary`).innerText.trim(), src('result'), src('side')];
        const last = window.resultsSeen[window.resultsSeen.length - 1];
        if (!last || last.some((value, i) => value !== state[i])) window.resultsSeen.push(state);
    };
    new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_animation_video_grows_then_stop_keeps_only_this_jobs_segments(page, e2e_media):
    """A two-segment job: the result pane plays the first segment while the second is generated, under step
    labels; then a longer job is stopped: the status says after which step, and the pane shows nothing of the
    previous result (at most this job's finished segment)."""
    page.locator("#animate-video button[aria-label='Clear']").click()  # the 80-frame clip instead of the short one
    page.locator("#animate-video input[type=file]").set_input_files(str(e2e_media["video"]))
    page.locator("#animate-video video").wait_for(timeout=30_000)
    previous_job = _job(page, "animate")
    page.locator("#animate-extract").click()
    _wait_for_extraction(page, "animate", previous_job)
    _progress_seen(page)
    page.locator("#animate-generate").click()
    _wait_for_no_video(page, "#animate-result")  # the previous result goes first
    page.evaluate(RECORD_RESULTS, "animate")
    _wait_for_video(page, "#animate-side")  # the finished job's side-by-side comes last
    results = page.evaluate("() => window.resultsSeen")
    growing = [summary for summary, result, side in results if result and not side]
    assert any("Segment 1 of 2 done" in summary for summary in growing), "\n".join(map(str, results))  # filled before the job ended
    assert "Seed" in results[-1][0] and results[-1][1] and results[-1][2]
    seen = _progress_seen(page)
    for label in ("Segment 1/2 · step ", "Segment 2/2 · ", "Writing the side-by-side video"):
        assert any(text.startswith(label) for text in seen), (label, seen)
    assert any(" left - " in text for text in seen), seen  # the time left, with the bar's percentage
    page.screenshot(path=str(ARTIFACTS / "05b_animation_grown.png"), full_page=True)

    _set_slider(page, "animate-steps", 30)
    page.locator("#animate-generate").click()
    _wait_for_no_video(page, "#animate-result")
    page.evaluate(RECORD_RESULTS, "animate")
    page.wait_for_function("() => window.progressSeen.some(text => text.includes(' · step '))", timeout=LONG)
    page.locator("#animate-stop").click()
    page.locator("#animate-status").get_by_text(re.compile(r"Stopped after step \d+ of 60")).wait_for(timeout=LONG)
    results = page.evaluate("() => window.resultsSeen")
    assert all(not side and "Seed" not in summary for summary, _, side in results), results  # no earlier result
    assert all("Segment 1 of 2 done" in summary for summary, result, _ in results if result), results
    page.screenshot(path=str(ARTIFACTS / "05c_animation_stopped.png"), full_page=True)
    _set_slider(page, "animate-steps", 2)


# -- Replacement ----------------------------------------------------------------------------------------


def _job_mask(served_demo, job_id: str):
    """The mask a job's conditioning holds (read back from its video, thresholded to 0/1)."""
    from wan_animate.jobs import open_job

    return np.asarray(open_job(served_demo.studio.work_root, job_id).load_conditioning().mask_frames)


def test_replacement_click_changes_the_mask(page, served_demo, e2e_media):
    page.get_by_role("tab", name="Replacement").click()
    _upload(page, "replace", e2e_media["photo"], e2e_media["short_video"])
    # Keep the mask close to SAM2's own (no dilation, a fine grid) so a click's effect on it stays visible.
    _set_slider(page, "replace-mask-kernel", 1)
    _set_slider(page, "replace-mask-iterations", 0)
    _set_slider(page, "replace-blockify", 32)
    page.locator("#replace-extract").click()
    first_job = _wait_for_extraction(page, "replace")
    _assert_previews_play(page, "replace")
    assert "Mask covers" in page.locator("#replace-report").inner_text()
    first_pixels = page.evaluate(FIRST_FRAME, "#replace-mask")
    # Control: extracting again without a click (a new job) gives the very same mask (compared on the conditioning's
    # mask itself; the preview is a lossy encode of it).
    page.locator("#replace-extract").click()
    control_job = _wait_for_extraction(page, "replace", first_job)
    first_mask = _job_mask(served_demo, first_job)
    assert first_mask.any() and (_job_mask(served_demo, control_job) == first_mask).all()
    picker = page.locator("#replace-picker img")
    picker.wait_for(timeout=30_000)

    # A negative click (not the person) on the frame, then extract again.
    page.locator("#replace-point-label").get_by_text("Not the person").click()
    box = picker.bounding_box()
    picker.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.45})  # the frame is centred in the box
    page.wait_for_function(
        "() => document.querySelector('#replace-points').innerText.includes('1 point')", timeout=30_000
    )
    page.screenshot(path=str(ARTIFACTS / "06_replacement_clicked.png"), full_page=True)
    page.locator("#replace-extract").click()
    clicked_job = _wait_for_extraction(page, "replace", control_job)
    _wait_for_video(page, "#replace-mask")
    # The mask changed where SAM2 follows the click (a negative click is not a person choice, so only SAM2's
    # prompts differ between the two extractions), and the preview shows it.
    assert (_job_mask(served_demo, clicked_job) != first_mask).any()
    second_pixels = page.evaluate(FIRST_FRAME, "#replace-mask")
    assert len(second_pixels) == len(first_pixels)
    changed = sum(abs(a - b) > 40 for a, b in zip(first_pixels, second_pixels))
    assert changed > 0
    page.screenshot(path=str(ARTIFACTS / "07_replacement_reextracted.png"), full_page=True)

    _set_slider(page, "replace-steps", 2)
    page.locator("#replace-generate").click()
    _wait_for_video(page, "#replace-side")
    _assert_plays(page, "#replace-result")
    _assert_plays(page, "#replace-side")
    page.screenshot(path=str(ARTIFACTS / "08_replacement_result.png"), full_page=True)


def test_replacement_draft_shows_previews_and_result(page):
    _run_one_shot(page, "replace", "draft")
    page.screenshot(path=str(ARTIFACTS / "09_replacement_draft.png"), full_page=True)


def test_replacement_one_click_shows_previews_and_result(page):
    _run_one_shot(page, "replace", "oneshot")
    page.screenshot(path=str(ARTIFACTS / "10_replacement_one_click.png"), full_page=True)


# -- Widths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1280, 390])
def test_layout_examples_first_and_buttons_on_one_line(browser, served_app, width):
    """The example is above the uploads and fills them; no action button's label wraps (at 1280 px they share
    one row)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(served_app)
    for mode, title in (("animate", "Animation"), ("replace", "Replacement")):
        page.get_by_role("tab", name=title).click()
        example = page.locator(f"#{mode}-examples button", has_text="dancing figure")
        assert example.bounding_box()["y"] < page.locator(f"#{mode}-photo").bounding_box()["y"]
        buttons = [page.locator(f"#{mode}-{name}").bounding_box() for name in ("extract", "generate", "draft", "oneshot", "stop")]
        assert {button["height"] for button in buttons} == {buttons[0]["height"]}  # one text line each
        if width == 1280:
            assert {button["y"] for button in buttons} == {buttons[0]["y"]}
        assert max(button["x"] + button["width"] for button in buttons) <= width
        example.click()
        page.locator(f"#{mode}-video video").wait_for(timeout=30_000)
        page.locator(f"#{mode}-photo img").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / f"11_{mode}_{width}px.png"), full_page=True)
    page.close()
