"""``python -m wan_animate``: preprocess, generate from a folder or from raw inputs, and user errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.e2e_fixtures import dancing_frames, small_media, tiny_models  # noqa: F401  (session fixture)
from tests.media import video_facts, write_test_video
from wan_animate.cli import main
from wan_animate.conditioning import Conditioning
from wan_animate.demo import DEMO_AREAS
from wan_animate.preprocess import sizing

# The test media are smaller than the real input minimums (see tests.e2e_fixtures.TEST_LIMITS).
pytestmark = pytest.mark.usefixtures("small_media")


def test_help_explains_every_option():
    result = subprocess.run([sys.executable, "-m", "wan_animate", "replace", "--help"], capture_output=True, text=True, check=True)
    for option in ("--image", "--video", "--conditioning", "--memory-mode", "--relight", "--blockify", "--color-match", "--seed", "--state-dir", "--max-segments"):
        assert option in result.stdout
    assert "Replacement: the character replaces the person" in result.stdout


def test_preprocess_then_generate_from_the_folder(tiny_models, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setitem(sizing.RESOLUTION_AREAS, "480p", DEMO_AREAS["480p"])
    video = write_test_video(tmp_path / "dance.mp4", dancing_frames(6), 30.0, audio_seconds=0.2)
    photo = tmp_path / "photo.png"
    Image.fromarray(dancing_frames(1)[0]).save(photo)
    models = ["--detector", str(tiny_models.detector), "--pose-model", str(tiny_models.pose), "--sam2", str(tiny_models.sam2)]
    out = tmp_path / "prepared"
    assert main(["preprocess", "replace", "--image", str(photo), "--video", str(video), "--resolution", "480p", "-o", str(out), *models]) == 0
    assert "Person found" in capsys.readouterr().out
    conditioning = Conditioning.load(out / "conditioning")
    assert conditioning.mode == "replace" and conditioning.num_frames == 6

    result = tmp_path / "out.mp4"
    code = main([
        "replace", "--conditioning", str(out / "conditioning"), "-o", str(result), "--model", str(tiny_models.checkpoint),
        "--allow-cpu", "--dtype", "float32", "--steps", "2", "--seed", "3", "--relight-lora", str(tiny_models.relight_lora),
    ])
    assert code == 0
    assert "seed 3" in capsys.readouterr().out
    facts = video_facts(result)
    assert facts["frames"] == 6 and facts["has_audio"] and (facts["height"], facts["width"]) == (conditioning.height, conditioning.width)


def test_user_errors_exit_with_a_message(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert main(["animate", "--image", str(photo), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "Give --image and --video" in capsys.readouterr().err
    assert main(["animate", "--conditioning", str(tmp_path / "missing"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "Conditioning folder not found" in capsys.readouterr().err


def test_a_job_stopped_after_a_segment_goes_on_with_the_same_state_dir(tiny_checkpoint, tmp_path, capsys):
    from tests.test_generate import make_conditioning

    folder = make_conditioning("animate", 78).save(tmp_path / "conditioning")  # two 77-frame segments
    command = [
        "animate", "--conditioning", str(folder), "-o", str(tmp_path / "out.mp4"), "--model", str(tiny_checkpoint),
        "--allow-cpu", "--dtype", "float32", "--steps", "1", "--seed", "3", "--state-dir", str(tmp_path / "state"),
    ]
    assert main([*command, "--max-segments", "1"]) == 0
    assert "Stopped after segment 1 of 2: run the same command again" in capsys.readouterr().out
    assert video_facts(tmp_path / "out.mp4")["frames"] == 77
    assert main(command) == 0
    assert "Wrote" in capsys.readouterr().out and video_facts(tmp_path / "out.mp4")["frames"] == 78
