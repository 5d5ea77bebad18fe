"""Ahead-of-time compiled blocks on the CPU (AOTInductor compiles C++ with gcc): one package of the tiny model,
built once with the relighting and few-step LoRAs as slots, then loaded in a fresh process and in this one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_generate import make_conditioning
from wan_animate import aot
from wan_animate.errors import WanAnimateError
from wan_animate.models import load_pipeline

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SIZE = (48, 48)
"""Pixel size of the segment the package is traced with (the tests run it at other sizes too)."""


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def loras(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The relighting LoRA in upstream's format, and a few-step LoRA in the format of Kijai's lightx2v files,
    whose bias diffs become LoRA biases (``lora_B.bias``) the package passes through too."""
    from diffusers import WanAnimateTransformer3DModel
    from safetensors.torch import save_file

    from tests.test_presets import _kijai_fast_lora
    from wan_animate.demo.loras import build_tiny_relighting_lora

    folder = tmp_path_factory.mktemp("loras")
    transformer = WanAnimateTransformer3DModel.from_pretrained(tiny_checkpoint / "transformer")
    save_file(_kijai_fast_lora(transformer), str(folder / "fast.safetensors"))
    return {
        "relight": build_tiny_relighting_lora(tiny_checkpoint, folder / "relighting_lora.ckpt"),
        "fast": folder / "fast.safetensors",
    }


def _with_loras(pipeline, loras: dict[str, Path]):
    """Load both LoRAs switched off, as the app does before its first job."""
    from wan_animate.presets import ensure_fast_lora, ensure_relighting_lora

    ensure_relighting_lora(pipeline, str(loras["relight"]))
    ensure_fast_lora(pipeline, str(loras["fast"]))
    return pipeline


@pytest.fixture(scope="module")
def package(tiny_checkpoint, loras, tmp_path_factory) -> tuple[Path, aot.PackageInfo]:
    """The tiny model's blocks compiled once (plain + LoRA graphs, dynamic token count)."""
    pipeline = _with_loras(load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=False), loras)
    path = tmp_path_factory.mktemp("aot") / "blocks.pt2"
    info = aot.compile_blocks_aot(pipeline, path, size=EXAMPLE_SIZE, frames=5)
    return path, info


def test_the_package_holds_code_and_says_what_it_was_built_for(package):
    path, info = package
    assert aot.read_package_info(path) == info
    assert info.variants == ["plain", "lora"]
    assert info.device == "cpu" and info.capability is None and info.dtype == "float32" and not info.fp8
    assert info.tokens == (aot.MIN_TOKENS, aot.MAX_TOKENS) == (16, 21 * 3600)
    assert set(info.lora_slots) == {"relight", "fast"}
    assert len(info.lora_slots["fast"]) == 12 and set(info.lora_slots["fast"].values()) == {4}
    assert len(info.lora_slots["relight"]) == 12 and set(info.lora_slots["relight"].values()) == {128}
    assert len(info.scale_order) == 24
    assert "LoRA slots fast+relight" in info.describe()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert any(name.endswith(".wrapper.so") for name in names)
    assert not any("weights" in name or name.endswith(".pt") for name in names)  # no block's weights inside


def _transformer_script(checkpoint: Path, package_path: Path, loras: dict[str, Path]) -> str:
    """A program that loads the package in its own process and compares it with eager under three LoRA states."""
    return textwrap.dedent(f"""
        import json, torch
        from wan_animate import aot
        from wan_animate.lora import set_lora_weights
        from wan_animate.models import load_pipeline
        from wan_animate.presets import ensure_fast_lora, ensure_relighting_lora

        package = {str(package_path)!r}
        pipe = load_pipeline({str(checkpoint)!r}, allow_cpu=True, compile_blocks="aot:" + package)
        ensure_relighting_lora(pipe, {str(loras["relight"])!r})
        ensure_fast_lora(pipe, {str(loras["fast"])!r})
        inputs = aot.example_transformer_inputs(pipe, (48, 64), 9, seed=1)
        report = {{"summary": pipe.wan_runtime.summary(), "runs": {{}}}}
        for label, weights in [("off", {{}}), ("relight", {{"relight": 1.0}}),
                               ("relight 0.5 + fast", {{"relight": 0.5, "fast": 1.0}})]:
            set_lora_weights(pipe, {{"relight": 0.0, "fast": 0.0, **weights}})
            runtime = aot.load_compiled_blocks(pipe, package)
            with torch.no_grad():
                compiled = pipe.transformer(**inputs)[0]
                aot.unload_compiled_blocks(pipe)
                eager = pipe.transformer(**inputs)[0]
            report["runs"][label] = dict(difference=float((compiled - eager).abs().max()),
                                         scale=float(eager.abs().max()), calls=runtime.calls)
        print(json.dumps(report))
    """)


def test_a_fresh_process_loads_the_package_and_matches_eager_with_any_lora_weights(package, tiny_checkpoint, loras):
    path, _ = package
    result = subprocess.run(
        [sys.executable, "-c", _transformer_script(tiny_checkpoint, path, loras)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "AoT-compiled blocks (blocks.pt2: float32" in report["summary"]
    runs = report["runs"]
    for label, run in runs.items():
        assert run["scale"] > 0.1 and run["difference"] < 1e-4 * run["scale"], (label, run)
    # Both blocks ran through the graphs, never eagerly: the plain one with the LoRAs off.
    assert runs["off"]["calls"] == {"plain": 2, "lora": 0, "eager": 0}
    assert runs["relight"]["calls"] == runs["relight 0.5 + fast"]["calls"] == {"plain": 0, "lora": 2, "eager": 0}


def _conditioning(mode: str, frames: int):
    """Random conditioning whose segments have 27 tokens (3 latent frames of 3 x 3 patches), within the package's."""
    return make_conditioning(mode, frames, height=48, width=48)


def test_lora_weights_switched_between_jobs_match_the_eager_pipeline(package, tiny_checkpoint, loras):
    """Jobs in a row through `generate` (which switches the LoRAs per job), compiled and eager: same videos."""
    from wan_animate.generate import GenerationSettings, generate

    path, _ = package
    jobs = [
        ("replace", dict(relight_weight=1.0)),
        ("replace", dict(relight_weight=0.4)),
        ("animate", dict(lora_weights={"fast": 1.0})),
        ("animate", dict()),
    ]
    conditionings = {mode: _conditioning(mode, 5) for mode in ("replace", "animate")}
    videos = {}
    for compiled in (False, True):
        pipe = _with_loras(load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=compiled and f"aot:{path}"),
                           loras)
        videos[compiled] = [
            generate(pipe, conditionings[mode], GenerationSettings(num_inference_steps=2, segment_frames=5, seed=0,
                                                                   **settings)).frames
            for mode, settings in jobs
        ]
    calls = aot.compiled_blocks(pipe).calls
    assert calls["eager"] == 0 and calls["plain"] > 0 and calls["lora"] > 0
    eager, compiled = videos[False], videos[True]
    assert np.abs(eager[0].astype(int) - eager[1]).max() > 0  # the relighting weight changes the video
    for eager_video, compiled_video in zip(eager, compiled):
        assert np.abs(eager_video.astype(int) - compiled_video).max() <= 1


def test_calls_the_package_cannot_take_run_eagerly_and_say_so(package, tiny_checkpoint, loras, caplog):
    from peft import LoraConfig

    path, _ = package
    pipe = _with_loras(load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=f"aot:{path}"), loras)
    transformer = pipe.transformer
    runtime = aot.compiled_blocks(pipe)
    inputs = aot.example_transformer_inputs(pipe, EXAMPLE_SIZE, 5)
    batch = {key: torch.cat([value, value]) if isinstance(value, torch.Tensor) and key != "timestep" else value
             for key, value in inputs.items()}
    batch["timestep"] = inputs["timestep"].repeat(2)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["blocks.0.attn1.to_q"], init_lora_weights=False)
    transformer.add_adapter(config, adapter_name="other")  # an adapter the package has no slot for
    transformer.disable_adapters()
    outputs = {}
    with caplog.at_level(logging.WARNING, logger="wan_animate"), torch.no_grad():
        outputs["batch"] = transformer(**batch)[0]
        transformer.enable_adapters()
        transformer.set_adapters(["other"], [1.0])
        outputs["other"] = transformer(**inputs)[0]
        calls = dict(runtime.calls)
        aot.unload_compiled_blocks(pipe)
        eager_other = transformer(**inputs)[0]
        transformer.disable_adapters()
        eager_batch = transformer(**batch)[0]
    assert calls == {"plain": 1, "lora": 0, "eager": 3}  # the batch: both blocks; "other": block 0 only
    assert torch.equal(outputs["batch"], eager_batch)  # all eager
    assert torch.allclose(outputs["other"], eager_other, atol=1e-5)  # block 1 compiled
    warnings = [record.getMessage() for record in caplog.records]
    assert any("runs eagerly" in text and "shape [2," in text for text in warnings)
    assert any("LoRA 'other' is active on attn1.to_q and the package has no slot" in text for text in warnings)


def _rewritten(path: Path, target: Path, **changes) -> Path:
    """A copy of the package whose description has ``changes``."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(aot.METADATA_FILE):
                data = json.dumps({**json.loads(data), **changes}).encode()
            copy.writestr(item, data)
    return target


def test_missing_and_incompatible_packages_are_refused(package, tiny_checkpoint, tmp_path):
    from diffusers import WanAnimateTransformer3DModel

    from wan_animate.demo.checkpoint import tiny_transformer_config

    path, info = package
    transformer = load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=False).transformer
    not_a_zip = tmp_path / "notes.pt2"
    not_a_zip.write_text("hello")
    other_zip = tmp_path / "other.pt2"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("other/data/x", "x")
    wider = dict(tiny_transformer_config(), num_attention_heads=3)
    cases = [
        (tmp_path / "absent.pt2", transformer, "not found"),
        (not_a_zip, transformer, "not a PT2 archive"),
        (other_zip, transformer, "not a compiled-blocks package of wan_animate"),
        (_rewritten(path, tmp_path / "format.pt2", format=99), transformer, "format 99"),
        (_rewritten(path, tmp_path / "torch.pt2", torch="2.5"), transformer, "built with torch 2.5"),
        (_rewritten(path, tmp_path / "gpu.pt2", device="cuda"), transformer, "for cuda"),
        (path, WanAnimateTransformer3DModel(**wider), "another transformer .*num_attention_heads 2 vs 3"),
        (path, transformer.to(torch.float16), "for float32 weights"),
    ]
    for source, model, message in cases:
        with pytest.raises(WanAnimateError, match=message):
            aot.load_compiled_blocks(model, source)
        assert aot.compiled_blocks(model) is None
    with pytest.raises(WanAnimateError, match="use True, False, 'auto' or 'aot:"):
        load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks="jit")
    with pytest.raises(WanAnimateError, match="cannot run with fp8 storage"):
        load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=f"aot:{path}", fp8_storage=True)
    with pytest.raises(WanAnimateError, match="owner/repo::path/in/repo.pt2"):
        aot.resolve_package("not a repo::blocks.pt2")


def test_a_package_comes_from_the_hub_cache_by_repo_and_file(package, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    path, info = package
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--wan-animate-aot"
    stored = repo / "snapshots" / commit / "h200" / "blocks.pt2"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = aot.resolve_package("someone/wan-animate-aot::h200/blocks.pt2")
    assert resolved == stored and aot.read_package_info(resolved) == info
    with pytest.raises(WanAnimateError, match="Could not get the compiled blocks 'h200/missing.pt2'"):
        aot.resolve_package("someone/wan-animate-aot::h200/missing.pt2")


def test_fp8_needs_torchao_and_says_so(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchao", None)  # an import of torchao fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    pipeline = load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=False)
    with pytest.raises(WanAnimateError, match="fp8 compiled blocks need torchao"):
        aot.compile_blocks_aot(pipeline, tmp_path / "fp8.pt2", size=EXAMPLE_SIZE, frames=5, fp8=True)
    assert not (tmp_path / "fp8.pt2").exists()


def test_package_info_round_trips_through_json(package):
    _, info = package
    assert aot.PackageInfo.from_json(json.dumps(asdict(info))) == info


CRASH = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
"""A test load that dies as torch 2.11's AOTInductor loader did on the H200 (RESULTS.md section 9)."""


def test_a_package_is_loaded_in_a_child_first_and_a_success_is_remembered(package, tmp_path, monkeypatch):
    path, info = package
    monkeypatch.setattr(aot.tempfile, "tempdir", str(tmp_path))
    cpu = torch.device("cpu")
    aot.probe_package_load(path, info.variants, cpu)  # the real loader, in a child process
    assert [marker.parent.name for marker in tmp_path.rglob("*") if marker.is_file()] == ["wan_animate_aot_loads"]
    monkeypatch.setattr(aot.subprocess, "run", None)  # a second probe of the same file starts no process
    aot.probe_package_load(path, info.variants, cpu)


def test_a_loader_crash_is_a_sentence_not_a_dead_app(package, tiny_checkpoint, tmp_path, monkeypatch, caplog):
    path, info = package
    monkeypatch.setattr(aot.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(aot, "_PROBE_SCRIPT", CRASH)
    monkeypatch.setattr(aot, "_needs_probe", lambda device: True)  # as on a GPU
    with pytest.raises(aot.PackageLoadError, match=r"cannot load the compiled blocks blocks.pt2 here: its loader "
                                                   r"crashed the test process that loaded it \(signal 11\)"):
        aot.probe_package_load(path, info.variants, torch.device("cpu"))
    assert not list(tmp_path.rglob("*.pt2*"))  # nothing remembered
    pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=False)
    # With the GPU present (a local start), the package is refused at load with that sentence.
    with pytest.raises(aot.PackageLoadError, match="Start without the compiled blocks"):
        aot.load_compiled_blocks(pipe, path)
    assert aot.compiled_blocks(pipe) is None
    # In a ZeroGPU worker (the main process had no GPU to try it on), every block runs eagerly, said once.
    runtime = aot.load_compiled_blocks(pipe, path, check_device=False)
    inputs = aot.example_transformer_inputs(pipe, EXAMPLE_SIZE, 5)
    with caplog.at_level(logging.WARNING, logger="wan_animate"), torch.no_grad():
        first = pipe.transformer(**inputs)[0]
        second = pipe.transformer(**inputs)[0]
    assert runtime.calls == {"plain": 0, "lora": 0, "eager": 4}
    aot.unload_compiled_blocks(pipe)
    with torch.no_grad():
        eager = pipe.transformer(**inputs)[0]
    assert torch.equal(first, eager) and torch.equal(second, eager)
    crashes = [record.getMessage() for record in caplog.records if "signal 11" in record.getMessage()]
    assert len(crashes) == 1 and crashes[0].startswith("A transformer block runs eagerly")
