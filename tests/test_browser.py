"""The page in a real browser (Playwright driving Debian's chromium): upload, extract, previews play, a click
changes the Replacement mask, generate, the result plays. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def page(served_app):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):  # an earlier run's screenshot could hide a missing one
        old.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(served_app)
        page.get_by_role("heading", name="Wan2.2-Animate").wait_for()
        yield page
        browser.close()


def _upload(page, mode: str, photo: Path, video: Path) -> None:
    page.locator(f"#{mode}-photo input[type=file]").set_input_files(str(photo))
    page.locator(f"#{mode}-video input[type=file]").set_input_files(str(video))
    page.locator(f"#{mode}-video video").wait_for(timeout=30_000)


def _wait_for_video(page, selector: str, previous: str | None = None) -> str:
    """Wait until ``selector`` shows a video (another one than ``previous``); returns its src."""
    page.wait_for_function(
        """([selector, previous]) => {
            const video = document.querySelector(selector + ' video');
            return video && video.src && video.src !== previous;
        }""",
        arg=[selector, previous],
        timeout=LONG,
    )
    return page.locator(f"{selector} video").get_attribute("src")


def _job(page, mode: str) -> str | None:
    """The job id the report names (each extraction makes a new job)."""
    match = re.search(r"Job (\S+)", page.locator(f"#{mode}-report").inner_text())
    return match.group(1) if match else None


def _wait_for_extraction(page, mode: str, previous_job: str | None = None) -> str:
    """Wait until the report names a job other than ``previous_job`` (while an extraction runs, the report only
    shows its progress); returns the new job id."""
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


def _set_slider(page, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box (opening the Settings accordion first if it is closed)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    if not box.is_visible():
        page.locator("button.label-wrap", has_text="Settings").locator("visible=true").first.click()
    box.fill(str(value))
    box.press("Tab")


def test_animation_extract_preview_generate(page, e2e_media):
    page.screenshot(path=str(ARTIFACTS / "00_start.png"), full_page=True)
    assert "CPU" in page.locator("#runtime").inner_text()
    _upload(page, "animate", e2e_media["photo"], e2e_media["short_video"])
    page.locator("#animate-extract").click()
    _wait_for_extraction(page, "animate")
    _wait_for_video(page, "#animate-skeleton")
    _wait_for_video(page, "#animate-faces")
    _assert_plays(page, "#animate-skeleton")
    _assert_plays(page, "#animate-faces")
    assert "Person found" in page.locator("#animate-report").inner_text()
    page.screenshot(path=str(ARTIFACTS / "01_animation_extracted.png"), full_page=True)

    page.locator("#animate-stop").click()  # nothing runs yet: Stop says so
    page.get_by_text("Nothing is being generated.").wait_for(timeout=30_000)
    _set_slider(page, "animate-steps", 2)
    page.locator("#animate-generate").click()
    _wait_for_video(page, "#animate-result")
    _wait_for_video(page, "#animate-side")
    state = _assert_plays(page, "#animate-result")
    assert state["duration"] == pytest.approx(20 / 30, abs=0.1)
    assert "Seed" in page.locator("#animate-summary").inner_text()
    page.screenshot(path=str(ARTIFACTS / "02_animation_result.png"), full_page=True)


def _job_mask(served_demo, job_id: str):
    """The mask a job's conditioning holds (read back from its video, thresholded to 0/1)."""
    from wan_animate.jobs import open_job

    return open_job(served_demo.studio.work_root, job_id).load_conditioning().mask_frames


def test_replacement_click_changes_the_mask(page, served_demo, e2e_media):
    page.get_by_role("tab", name="Replacement").click()
    _upload(page, "replace", e2e_media["photo"], e2e_media["short_video"])
    # Keep the mask close to SAM2's own (no dilation, a fine grid) so a click's effect on it stays visible.
    _set_slider(page, "replace-mask-kernel", 1)
    _set_slider(page, "replace-mask-iterations", 0)
    _set_slider(page, "replace-blockify", 32)
    page.locator("#replace-extract").click()
    first_job = _wait_for_extraction(page, "replace")
    _wait_for_video(page, "#replace-mask")
    _wait_for_video(page, "#replace-background")
    assert "Mask covers" in page.locator("#replace-report").inner_text()
    first_pixels = page.evaluate(FIRST_FRAME, "#replace-mask")
    _assert_plays(page, "#replace-mask")
    # Control: extracting again without a click (a new job) gives the very same mask. Compared on the
    # conditioning's mask, not on the preview's pixels: x264 (the libx264 in PyAV's wheels) reads an uninitialised
    # value in its lookahead, so identical frames may encode to slightly different bits from one run to the next.
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
    page.screenshot(path=str(ARTIFACTS / "03_replacement_clicked.png"), full_page=True)
    page.locator("#replace-extract").click()
    clicked_job = _wait_for_extraction(page, "replace", control_job)
    # The mask changed where SAM2 follows the click (a negative click is not a person choice, so only SAM2's
    # prompts differ between the two extractions), and the preview shows it.
    assert (_job_mask(served_demo, clicked_job) != first_mask).any()
    second_pixels = page.evaluate(FIRST_FRAME, "#replace-mask")
    assert len(second_pixels) == len(first_pixels)
    changed = sum(abs(a - b) > 40 for a, b in zip(first_pixels, second_pixels))
    assert changed > 0
    page.screenshot(path=str(ARTIFACTS / "04_replacement_reextracted.png"), full_page=True)

    _set_slider(page, "replace-steps", 2)
    page.locator("#replace-generate").click()
    _wait_for_video(page, "#replace-result")
    _assert_plays(page, "#replace-result")
    _assert_plays(page, "#replace-side")
    page.screenshot(path=str(ARTIFACTS / "05_replacement_result.png"), full_page=True)

