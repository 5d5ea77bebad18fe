"""Demo mode's models (wan_animate.demo): built once into a user cache folder, the frame areas shrunk and restored.

Building the real tiny set takes about 20 s; here the builder is a recorder that writes its files. The
real set is built and used by every end-to-end test (tests/e2e_fixtures.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import wan_animate.demo as demo
from wan_animate.preprocess import sizing


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    calls = []

    def build(folder):
        calls.append(Path(folder))
        for name in ("checkpoint", "detector", "sam2"):
            (Path(folder) / name).mkdir()
        (Path(folder) / "fast_lora.safetensors").write_bytes(b"lora")

    monkeypatch.setattr(demo, "build_tiny_models", build)
    return calls


def test_demo_models_are_built_once_and_reused(tmp_path, builds):
    first = demo.demo_models(tmp_path)
    again = demo.demo_models(tmp_path)
    assert len(builds) == 1 and first == again
    assert first.checkpoint.is_dir() and first.fast_lora.is_file()
    assert first.checkpoint.parent.parent == tmp_path and first.checkpoint.parent.name.startswith("demo-models-")
    assert [path.name for path in tmp_path.iterdir()] == [first.checkpoint.parent.name]  # no staging folder left


def test_the_cache_folder_follows_the_environment(tmp_path, builds, monkeypatch):
    monkeypatch.setenv("WAN_ANIMATE_CACHE", str(tmp_path / "cache"))
    assert demo.demo_models().checkpoint.is_relative_to(tmp_path / "cache")


def test_a_failed_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    def broken(folder):
        (Path(folder) / "checkpoint").mkdir()
        raise RuntimeError("out of disk")

    monkeypatch.setattr(demo, "build_tiny_models", broken)
    with pytest.raises(RuntimeError, match="out of disk"):
        demo.demo_models(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_demo_sizes_shrink_the_areas_only_inside_the_block():
    real = dict(sizing.RESOLUTION_AREAS)
    with demo.demo_sizes():
        assert sizing.RESOLUTION_AREAS == demo.DEMO_AREAS
    assert sizing.RESOLUTION_AREAS == real
