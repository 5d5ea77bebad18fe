"""The app's jobs: whose they are, what of them is served, how the folder is kept bounded, many clients at once.

Through `gradio_client` against the served app (`tests.e2e_fixtures.served_app`, tiny models on the CPU): each
client is its own Gradio session, as each browser tab is. The cleanup test calls a `Studio` directly (tiny models,
no server); the concurrency test serves its own app with a short queue and holds the running jobs at a gate so the
queue's state is known when each client arrives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError

from tests.bad_inputs import make_media
from tests.e2e_fixtures import serve, small_media_limits
from wan_animate.demo import demo_sizes
from wan_animate.jobs import RESULT_PATTERN, folder_bytes, open_job
from wan_animate.preprocess import Preprocessed, PreprocessOptions
from wan_animate.space import AppConfig, Studio
from wan_animate.space import studio as studio_module
from wan_animate.video import read_image

pytest_plugins = ["tests.e2e_fixtures"]  # the served app, tiny models and media fixtures


def _client(url: str, folder: Path | bool) -> Client:
    """A client (a session of its own) that downloads outputs into ``folder`` (``False``: gives their URLs)."""
    return Client(url, download_files=str(folder) if folder else False, verbose=False)


def _extract(client: Client, media: dict[str, Path], mode: str = "animate", video: str = "short_video"):
    """An extraction at 480p (64 x 64 here) of the 20-frame clip; returns the endpoint's outputs."""
    api_name = "/extract_replacement" if mode == "replace" else "/extract_animation"
    return client.predict(
        handle_file(str(media["photo"])), handle_file(str(media[video])), resolution="480p", api_name=api_name
    )


# -- ownership and mode ----------------------------------------------------------------------------------


def test_owner_only_the_session_that_extracted_can_generate(served_app, e2e_media, tmp_path):
    owner, other = _client(served_app, tmp_path / "a"), _client(served_app, tmp_path / "b")
    *_, job_id = _extract(owner, e2e_media)
    with pytest.raises(AppError, match="belongs to another session") as refused:
        other.predict(job_id, "quality", 1, 1, api_name="/animate")
    assert job_id not in str(refused.value)
    with pytest.raises(AppError, match="belongs to another session"):
        other.predict(job_id, "quality", 1, 1, api_name="/replace")  # the owner check comes before the mode's
    video, _, summary, details = owner.predict(job_id, "quality", 1, 1, api_name="/animate")
    assert details["job_id"] == job_id and Path(video).is_file()


def test_owner_the_pages_previews_and_picker_refuse_another_session(served_demo, served_app, e2e_media, tmp_path):
    """The page's own events (not API endpoints) open the job the same way."""
    owner = _client(served_app, tmp_path)
    *_, job_id = _extract(owner, e2e_media, mode="replace")
    studio = served_demo.studio
    other_tab = types.SimpleNamespace(session_hash="another-tab")
    with pytest.raises(gr.Error, match="belongs to another session"):
        studio.job_previews("replace", job_id, other_tab)
    previews = studio.job_previews("replace", job_id, types.SimpleNamespace(session_hash=owner.session_hash))
    assert all(Path(path).is_file() for path in previews[:4])
    picked = studio.picker_frame(str(e2e_media["short_video"]), job_id, 0, 0.0, None, "30", "", other_tab)
    assert picked == (None, None)  # a warning on the page instead of the other session's mask


def test_refuse_a_job_of_the_other_mode(served_app, e2e_media, tmp_path):
    client = _client(served_app, tmp_path)
    *_, animation = _extract(client, e2e_media, mode="animate")
    *_, replacement = _extract(client, e2e_media, mode="replace")
    with pytest.raises(AppError, match="made for Animation, not Replacement"):
        client.predict(animation, "quality", 1, 1, api_name="/replace")
    with pytest.raises(AppError, match="made for Replacement, not Animation"):
        client.predict(replacement, "quality", 1, 1, api_name="/animate")


# -- what is served --------------------------------------------------------------------------------------


def test_only_previews_and_results_are_served_never_inputs_or_the_job_record(served_demo, served_app, e2e_media, tmp_path):
    """The page gets Gradio's copies of previews, results and the growing video of a running generation; the jobs
    folder (uploads, job.json) is not served, however its URL is made."""
    client = _client(served_app, False)  # outputs as the URLs the page gets
    skeleton, *_, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), handle_file(str(e2e_media["short_video"])), resolution="480p",
        api_name="/extract_animation",
    )
    generation = client.submit(job_id, "quality", 1, 1, api_name="/animate")
    result, side, *_ = generation.result(timeout=120)
    (growing, *_), *_ = generation.outputs()  # after the segment, before the result: the job's growing video
    job = open_job(served_demo.studio.work_root, job_id)
    for output in (skeleton, growing, result, side):
        url = output["url"]
        assert job_id not in url and str(served_demo.studio.work_root) not in url
        assert httpx.get(url, timeout=30).status_code == 200
    # The preview's URL with its path swapped for the job's files: the original upload, the record, the result.
    job_files = [job.record.photo, job.record.video, job.folder / "job.json", job.preview("skeleton")]
    job_files += [path for path in job.folder.iterdir() if RESULT_PATTERN.match(path.name)]
    assert len(job_files) == 6 and all(Path(path).is_file() for path in job_files)
    prefix = skeleton["url"].split("file=")[0] + "file="
    for path in job_files:
        assert httpx.get(f"{prefix}{path}", timeout=30).status_code == 403, path
    assert not any(job.folder.is_relative_to(Path(allowed).resolve()) for allowed in served_demo.allowed_paths)


def test_a_photo_path_that_was_not_uploaded_is_refused(served_app, e2e_media, tmp_path):
    """A client naming a server file as the photo (no upload) gets a sentence; the file is never read."""
    client = _client(served_app, tmp_path)
    server_file = {"path": str(e2e_media["photo"])}  # a file on the server, outside Gradio's upload folder
    with pytest.raises(AppError, match="Upload the photo itself"):
        client.predict(server_file, handle_file(str(e2e_media["short_video"])), api_name="/extract_animation")


@pytest.mark.parametrize("key", ["photo_alpha", "photo_grey16", "photo_cmyk"])
def test_the_photo_reaches_the_package_as_uploaded(served_demo, served_app, e2e_media, tmp_path, key):
    """Gradio neither decodes nor converts the photo (transparency, 16-bit grey, CMYK): the job reads the user's
    own bytes with `wan_animate.video.read_image`."""
    media = make_media(tmp_path / "media")
    client = _client(served_app, tmp_path / "downloads")
    *_, job_id = client.predict(
        handle_file(str(media[key])), handle_file(str(e2e_media["short_video"])), resolution="480p",
        api_name="/extract_animation",
    )
    job = open_job(served_demo.studio.work_root, job_id)
    assert Path(job.record.photo).name == media[key].name
    assert Path(job.record.photo).read_bytes() == media[key].read_bytes()


# -- cleanup ---------------------------------------------------------------------------------------------


class CopyingPreprocessor:
    """Stands in for the preprocessor once one real extraction is done: reads the photo by the package's rule
    (so a damaged one fails as it would), then copies that extraction's files into the new job."""

    detector = pose_estimator = segmenter = None  # "loaded"

    def __init__(self, prepared: Preprocessed) -> None:
        self.prepared = prepared

    def prepare(self, mode, photo, video, workdir, options, *, progress=None) -> Preprocessed:
        read_image(photo)
        shutil.copytree(self.prepared.folder, workdir)
        moved = lambda path: Path(workdir) / Path(path).relative_to(self.prepared.folder)  # noqa: E731
        return replace(self.prepared, folder=Path(workdir), skeleton_video=moved(self.prepared.skeleton_video), face_video=moved(self.prepared.face_video))


def test_cleanup_keeps_the_jobs_folder_bounded_over_30_jobs(tiny_models, tmp_path):
    """30 extractions (every fifth fails after its folder was made), every tenth generated twice: the folder
    never holds more than the limit plus the job just made, failed extractions leave nothing, and a job keeps
    one result."""
    media = make_media(tmp_path / "media")  # a 6-frame clip at the real minimum sizes
    limit = 150_000  # about six jobs of this clip
    config = AppConfig(work_dir=tmp_path / "jobs", max_job_bytes=limit, keep_results=1).with_tiny_models(tiny_models)
    tab = types.SimpleNamespace(session_hash="cleanup-test")
    quiet = lambda *args, **kwargs: None  # noqa: E731
    with demo_sizes():
        studio = Studio(config)
        studio.cleaner.stop()  # this test cleans through the actions alone
        real = studio.preprocessor.prepare("animate", media["photo"], media["video"], tmp_path / "real", PreprocessOptions(resolution="480p"))
        studio.preprocessor = CopyingPreprocessor(real)
        sizes, made, refused = [], [], 0
        for index in range(30):
            photo = media["photo_truncated_png" if index % 5 == 4 else "photo"]
            try:
                *_, job_id = studio.extract_animation(str(photo), str(media["video"]), resolution="480p", request=tab, progress=quiet)
            except gr.Error as error:
                assert "truncated.png" in str(error)
                refused += 1
            else:
                made.append(job_id)
                if index % 10 == 0:
                    for seed in (1, 2):
                        asyncio.run(_run_to_end(studio.animate(job_id, "quality", 1, seed, request=tab, progress=quiet)))
                    assert len(_results(studio.work_root / job_id)) == 2  # the second result and its side-by-side
            newest = max(studio.work_root.iterdir(), key=lambda folder: folder.stat().st_mtime_ns)
            sizes.append(folder_bytes(studio.work_root))
            assert sizes[-1] <= limit + folder_bytes(newest), sizes
    left = sorted(folder.name for folder in studio.work_root.iterdir())
    assert refused == 6 and len(made) == 24 and max(sizes) > limit  # the limit was reached, and held
    assert 0 < len(left) < 10 and set(left) <= set(made[-10:])  # the least recently used went; no failed extraction stayed
    for job_id in left:
        assert len(_results(studio.work_root / job_id)) in (0, 2)  # one result and its side-by-side, or none
        assert (studio.work_root / job_id / "job.json").is_file()


async def _run_to_end(outputs) -> tuple:
    """The last outputs of a generation endpoint (an async generator) called directly."""
    async for last in outputs:
        pass
    return last


def _results(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if RESULT_PATTERN.match(path.name)]


def test_cleanup_at_start_removes_expired_jobs(tiny_models, tmp_path, e2e_media, small_media):
    config = AppConfig(work_dir=tmp_path / "jobs", max_job_age=3600).with_tiny_models(tiny_models)
    with demo_sizes():
        first = Studio(config)
        first.cleaner.stop()
        *_, old = first.extract_animation(str(e2e_media["photo"]), str(e2e_media["short_video"]), resolution="480p", progress=lambda *a, **k: None)
        *_, young = first.extract_animation(str(e2e_media["photo"]), str(e2e_media["short_video"]), resolution="480p", progress=lambda *a, **k: None)
    two_hours_ago = time.time() - 7200
    os.utime(first.work_root / old, (two_hours_ago, two_hours_ago))
    restarted = Studio(config)
    restarted.cleaner.stop()  # returns once its first pass, run at start, is done
    assert sorted(path.name for path in restarted.work_root.iterdir()) == [young]


# -- many clients at once --------------------------------------------------------------------------------


class Gate:
    """Holds every call of ``function`` until `open`, counting the calls inside it and recording their order."""

    def __init__(self, function) -> None:
        self.function = function
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.entered: list[str] = []
        self.inside = self.most_inside = 0

    def __call__(self, label: str, *args, **kwargs):
        with self.lock:
            self.entered.append(label)
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            assert self.opened.wait(120), "the gate was never opened"
            return self.function(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_8_clients_are_served_or_refused_in_order(tiny_models, tmp_path_factory, e2e_media, monkeypatch):
    """8 clients at once, 4 extracting and 4 generating, on an app that runs 2 extractions and 1 generation at a
    time and queues 3 more: the first ones run, the next 3 wait and run in the order they came, the last 2 are
    told the queue is full. Memory stays bounded because no more than the limits run at once."""
    config = AppConfig(
        work_dir=tmp_path_factory.mktemp("jobs"), max_queue=3, preprocess_concurrency=2, gpu_concurrency=1
    ).with_tiny_models(tiny_models)
    with demo_sizes(), small_media_limits(), serve(config) as demo:
        studio = demo.studio
        downloads = tmp_path_factory.mktemp("downloads")
        clients = {name: _client(demo.local_url, downloads / name) for name in ("E1", "E2", "G1", "G2", "E3", "G3", "E4", "G4")}
        jobs = {name: _extract(client, e2e_media)[-1] for name, client in clients.items() if name.startswith("G")}

        # Each client's calls are labelled by its session, so the gates record who got in, in which order.
        names = {client.session_hash: name for name, client in clients.items()}
        prepare, generate = Gate(studio.preprocessor.prepare), Gate(studio_module.generate_video)
        monkeypatch.setattr(studio.preprocessor, "prepare", lambda mode, photo, *a, **k: prepare(_owner(studio, names, photo), mode, photo, *a, **k))
        monkeypatch.setattr(studio_module, "generate_video", lambda pipeline, conditioning, path, *a, **k: generate(_owner(studio, names, path), pipeline, conditioning, path, *a, **k))

        # One client after the other, each once the server has placed the previous one, so the queue's state is
        # known: the first three run (2 extractions, 1 generation), the next three wait, the last two are refused.
        expected = dict(E1="runs", E2="runs", G1="runs", G2="waits", E3="waits", G3="waits", E4="refused", G4="refused")
        submitted = {}
        for name, client in clients.items():
            if name.startswith("E"):
                submitted[name] = client.submit(
                    handle_file(str(e2e_media["photo"])), handle_file(str(e2e_media["short_video"])), resolution="480p",
                    api_name="/extract_animation",
                )
            else:
                submitted[name] = client.submit(jobs[name], "quality", 1, 1, api_name="/animate")
            placed = {
                "runs": lambda: name in prepare.entered + generate.entered,
                "waits": lambda: submitted[name].status().code.value == "IN_QUEUE",
                "refused": lambda: submitted[name].done(),
            }[expected[name]]
            _wait_for(placed, f"{name}: {expected[name]}")

        assert (prepare.entered, generate.entered) == (["E1", "E2"], ["G1"])  # the concurrency limits
        for name in ("E4", "G4"):
            with pytest.raises(QueueError, match="Queue is full"):
                submitted[name].result(timeout=60)
        prepare.opened.set()
        generate.opened.set()
        for name in ("E1", "E2", "E3"):
            assert submitted[name].result(timeout=120)[-1].startswith("animate-")
        for name in ("G1", "G2", "G3"):
            assert submitted[name].result(timeout=120)[-1]["job_id"] == jobs[name]
        assert prepare.entered == ["E1", "E2", "E3"] and generate.entered == ["G1", "G2", "G3"]  # in the order they came
        assert (prepare.most_inside, generate.most_inside) == (2, 1)


def _owner(studio: Studio, names: dict[str, str], path) -> str:
    """The client whose job ``path`` (an input or a result of a job) belongs to."""
    job_id = Path(path).relative_to(studio.work_root).parts[0]
    return names[open_job(studio.work_root, job_id).record.owner]
