"""Model loading: the tiny checkpoint through `load_pipeline`, the hub path (no network), dtypes, memory modes,
fp8 storage, the bf16 transformer copy and the one cached pipeline."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wan_animate.models as models
from wan_animate.demo.checkpoint import tiny_transformer_config
from wan_animate.errors import WanAnimateError
from wan_animate.models import (
    DEFAULT_MODEL_ID,
    GiB,
    MEMORY_PLANS,
    allow_patterns,
    apply_memory_mode,
    bf16_copy_dir,
    choose_memory_mode,
    choose_memory_plan,
    clear_pipeline_cache,
    describe_runtime,
    download_size,
    get_pipeline,
    load_pipeline,
    resolve_dtype,
    resolve_source,
    runtime_info,
)

COMPONENTS = {
    "tokenizer": ["transformers", "T5Tokenizer"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "image_processor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModel"],
    "transformer": ["diffusers", "WanAnimateTransformer3DModel"],
}


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    """Every test runs as on a machine without CUDA, whatever machine runs the suite."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home"


@pytest.fixture(scope="module")
def cpu_pipeline(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, allow_cpu=True)


def _safetensors_dtypes(folder: Path) -> set[str]:
    """Dtypes named in the headers of a folder's safetensors files."""
    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        dtypes |= {entry["dtype"] for key, entry in header.items() if key != "__metadata__"}
    return dtypes


# -- the tiny checkpoint -----------------------------------------------------------------------------------


def test_tiny_checkpoint_has_the_real_repo_layout(tiny_checkpoint):
    from transformers import AutoTokenizer

    index = json.loads((tiny_checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "WanAnimatePipeline"
    assert {name: index[name] for name in COMPONENTS} == COMPONENTS
    for name in ("transformer", "text_encoder"):  # sharded with an index, like the real repo
        index_file = next((tiny_checkpoint / name).glob("*.safetensors.index.json"))
        shards = set(json.loads(index_file.read_text())["weight_map"].values())
        assert len(shards) > 1 and all((tiny_checkpoint / name / shard).is_file() for shard in shards)
    assert _safetensors_dtypes(tiny_checkpoint / "transformer") == {"F32"}  # stored in fp32 like the real one
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "flow_prediction" and scheduler["use_flow_sigmas"] is True
    assert scheduler["flow_shift"] == 5.0
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint / "tokenizer")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a person dancing").input_ids
    assert ids[-1] == 1 and 2 not in ids  # known words, eos appended
    text_encoder = json.loads((tiny_checkpoint / "text_encoder" / "config.json").read_text())
    assert text_encoder["d_model"] == tiny_transformer_config()["text_dim"]


def test_local_folder_loads_and_runs_on_cpu(cpu_pipeline):
    info = runtime_info(cpu_pipeline)
    assert (info.device, info.device_name, info.dtype, info.memory_mode, info.fp8_storage) == (
        "cpu", "CPU", "float32", "none", False,
    )
    assert "CPU" in info.summary()
    assert {p.dtype for p in cpu_pipeline.transformer.parameters()} == {torch.float32}
    rng = np.random.default_rng(0)
    frames, size = 10, 32
    output = cpu_pipeline(
        image=Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)),
        pose_video=[Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(frames)],
        face_video=[Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(frames)],
        prompt="a person dancing",
        height=size,
        width=size,
        segment_frame_length=5,  # three segments of 5 frames with 1 frame of overlap
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert output.shape == (frames, size, size, 3)
    assert np.isfinite(output).all() and 0 <= output.min() and output.max() <= 1 and output.std() > 0


def test_bf16_compute_keeps_vae_and_clip_in_float32(tiny_checkpoint):
    pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, dtype="bf16")
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32 and pipe.image_encoder.dtype == torch.float32
    assert runtime_info(pipe).dtype == "bfloat16"


def test_load_reports_progress_and_cpu_ignores_offloading(tiny_checkpoint, caplog):
    calls = []
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, memory_mode="group", progress=lambda *a: calls.append(a))
    assert runtime_info(pipe).memory_mode == "none"
    assert any("runs on the CPU" in r.getMessage() for r in caplog.records)
    assert any("'group' ignored" in r.getMessage() for r in caplog.records)
    assert [c[:2] for c in calls] == [(i, 4) for i in range(5)] and calls[-1][2] == "Model ready"


# -- device and dtype --------------------------------------------------------------------------------------


def test_no_gpu_without_allow_cpu_is_refused(tiny_checkpoint):
    with pytest.raises(WanAnimateError, match="allow_cpu=True"):
        load_pipeline(tiny_checkpoint)
    with pytest.raises(WanAnimateError, match="No CUDA GPU is available"):
        load_pipeline(tiny_checkpoint, device="cuda", allow_cpu=True)


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:1") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16  # told otherwise: honoured on the CPU too
    assert resolve_dtype("torch.float16") == torch.float16
    assert resolve_dtype(torch.float32, "cuda") == torch.float32
    with pytest.raises(WanAnimateError, match="Unknown dtype 'int8'"):
        resolve_dtype("int8")


# -- memory modes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget_gib,fp8,mode,tiling",
    [
        (79.2, False, "none", ()),  # an 80 GB H100: 720p reserves 74.2 GiB
        (139.0, False, "none", ()),  # a dedicated H200
        (70.0, False, "none", ("720p",)),  # ZeroGPU's slice: untiled 720p would reserve 74.2 GiB
        (60.0, False, "group", ()),  # model offload is never chosen: group offload is faster and smaller
        (44.4, False, "group", ()),  # a 48 GB card
        (23.5, False, "group", ("720p",)),  # a 24 GB card: 720p needs VAE tiling
        (14.5, False, "sequential", ("480p", "720p")),  # group offload peaks at 13.7 / 18.1 GiB
        (70.0, True, "none", ()),  # fp8 weights save ~16 GiB of the transformer
        (44.4, True, "none", ("480p", "720p")),
        (23.5, True, "group", ("720p",)),
    ],
)
def test_the_memory_plan_follows_the_table(budget_gib, fp8, mode, tiling):
    plan = choose_memory_plan(int(budget_gib * GiB), fp8)
    assert (plan.memory_mode, plan.vae_tiling, plan.fp8_storage) == (mode, tiling, fp8)
    chosen, reason = choose_memory_mode(int(budget_gib * GiB), fp8)
    assert chosen == mode and reason.startswith(f"{budget_gib:.1f} GiB budget: plan for {plan.budget_gib:g}+ GiB")


def test_every_budget_has_a_plan_and_every_row_is_valid():
    for fp8 in (False, True):
        rows = [row for row in MEMORY_PLANS if row.fp8_storage == fp8]
        assert min(row.budget_gib for row in rows) == 0  # any budget finds a row
        assert len({row.budget_gib for row in rows}) == len(rows)
        for row in rows:
            assert row.memory_mode in ("none", "group", "sequential") and row.measured
            assert set(row.vae_tiling) <= {"480p", "720p"}


def test_zerogpu_budget_is_the_slice_not_the_whole_gpu(monkeypatch):
    def no_cuda_here(device=None):
        raise AssertionError("ZeroGPU's main process must not touch CUDA")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda_here)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert models.on_zerogpu()
    budget, where = models.gpu_memory_budget("cuda")
    assert (budget, where) == (70 * GiB, "ZeroGPU slice")
    assert choose_memory_plan(budget).vae_tiling == ("720p",)
    assert not models.should_compile("none", budget)  # every ZeroGPU call would compile again
    assert models._auto_mode(torch.device("cuda"), False)[1].endswith("(ZeroGPU slice)")

    monkeypatch.delenv("SPACES_ZERO_GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * GiB, 140 * GiB))
    assert not models.on_zerogpu()
    assert models.gpu_memory_budget("cuda") == (139 * GiB, "free on the GPU")
    mode, reason = models._auto_mode(torch.device("cuda"), False)
    assert mode == "none" and reason == "139.0 GiB budget: plan for 75+ GiB (free on the GPU)"


def test_vae_tiling_follows_the_plan_per_job_resolution(tiny_checkpoint):
    from dataclasses import replace

    pipe = load_pipeline(tiny_checkpoint, allow_cpu=True)
    assert pipe.wan_runtime.vae_tiling_auto == ()  # the CPU has no plan: never tiles
    assert not models.apply_vae_tiling(pipe, "720p")
    pipe.wan_runtime = replace(pipe.wan_runtime, vae_tiling_auto=("720p",))
    assert "VAE tiling at 720p" in pipe.wan_runtime.summary()
    assert models.apply_vae_tiling(pipe, "720p") and pipe.vae.use_tiling
    assert not models.apply_vae_tiling(pipe, "480p") and not pipe.vae.use_tiling
    explicit = load_pipeline(tiny_checkpoint, allow_cpu=True, vae_tiling=True)
    assert explicit.wan_runtime.vae_tiling_auto is None
    assert models.apply_vae_tiling(explicit, "480p")  # asked for: left on


def test_apply_memory_mode_refuses_offloading_on_cpu_and_unknown_modes(cpu_pipeline):
    with pytest.raises(WanAnimateError, match="needs a CUDA GPU"):
        apply_memory_mode(cpu_pipeline, "group", "cpu")
    with pytest.raises(WanAnimateError, match="Unknown memory mode 'fast'"):
        apply_memory_mode(cpu_pipeline, "fast", "cpu")
    apply_memory_mode(cpu_pipeline, "none", "cpu")
    assert cpu_pipeline.transformer.device.type == "cpu"


# -- fp8 storage -------------------------------------------------------------------------------------------


def test_fp8_storage_runs_a_forward_on_cpu():
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(0)
    transformer = WanAnimateTransformer3DModel(**tiny_transformer_config()).eval()
    config = tiny_transformer_config()
    size = config["motion_encoder_size"]
    inputs = dict(
        hidden_states=torch.randn(1, 36, 3, 4, 4),  # reference latent frame + 2 segment latent frames
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 8, config["text_dim"]),
        encoder_hidden_states_image=torch.randn(1, 17, config["image_dim"]),
        pose_hidden_states=torch.randn(1, 16, 2, 4, 4),
        face_pixel_values=torch.rand(1, 3, 5, size, size) * 2 - 1,
    )
    with torch.no_grad():
        reference = transformer(**inputs).sample
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert transformer.dtype == torch.float32  # what the pipeline casts its inputs to
    try:
        with torch.no_grad():
            stored = transformer(**inputs).sample
    except (RuntimeError, NotImplementedError) as error:  # a build without fp8 casts on the CPU
        pytest.skip(f"this PyTorch cannot cast float8 on the CPU: {error}")
    assert stored.shape == reference.shape and torch.isfinite(stored).all()
    assert not torch.equal(stored, reference)  # the weights really were rounded to fp8
    assert torch.allclose(stored, reference, atol=0.5)


def test_fp8_storage_through_load_pipeline(tiny_checkpoint):
    pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, fp8_storage=True)
    assert runtime_info(pipe).fp8_storage and "fp8 weights" in runtime_info(pipe).summary()
    assert pipe.transformer.blocks[0].ffn.net[0].proj.weight.dtype == torch.float8_e4m3fn
    assert pipe.text_encoder.dtype == torch.float32  # only the transformer is stored in fp8


# -- the hub path (snapshot_download and the size lookup monkeypatched: no network) --------------------------

REPO_FILES = [
    (".gitattributes", 1_580),
    ("README.md", 56),
    ("model_index.json", 555),
    ("scheduler/scheduler_config.json", 800),
    ("tokenizer/tokenizer.json", 16_800_000),
    ("tokenizer/spiece.model", 4_550_000),
    ("tokenizer/tokenizer_config.json", 20_000),
    ("tokenizer/special_tokens_map.json", 2_500),
    ("image_processor/preprocessor_config.json", 500),
    ("image_processor/tokenizer.json", 3_640_000),  # CLIP's tokenizer files: not used by the pipeline
    ("image_processor/merges.txt", 525_000),
    ("image_encoder/config.json", 498),
    ("image_encoder/model.safetensors", 1_260_000_000),
    ("text_encoder/config.json", 850),
    ("text_encoder/model.safetensors.index.json", 20_000),
    ("text_encoder/model-00001-of-00003.safetensors", 4_990_000_000),
    ("text_encoder/model-00002-of-00003.safetensors", 4_990_000_000),
    ("text_encoder/model-00003-of-00003.safetensors", 1_370_000_000),
    ("text_encoder/pytorch_model.bin", 11_000_000_000),  # a duplicate format: never fetched
    ("vae/config.json", 724),
    ("vae/diffusion_pytorch_model.safetensors", 508_000_000),
    ("vae/diffusion_pytorch_model.pth", 508_000_000),
    ("transformer/config.json", 808),
    ("transformer/diffusion_pytorch_model.safetensors.index.json", 150_000),
    ("transformer/diffusion_pytorch_model-00001-of-00002.safetensors", 4_990_000_000),
    ("transformer/diffusion_pytorch_model-00002-of-00002.safetensors", 4_950_000_000),
]
CONFIGS = 555 + 800 + 16_800_000 + 4_550_000 + 20_000 + 2_500 + 500 + 498 + 850 + 724 + 808
ENCODERS_AND_VAE = 1_260_000_000 + 20_000 + 4_990_000_000 * 2 + 1_370_000_000 + 508_000_000
TRANSFORMER = 150_000 + 4_990_000_000 + 4_950_000_000


def test_download_size_counts_only_the_selected_files():
    assert download_size(REPO_FILES, allow_patterns()) == CONFIGS + ENCODERS_AND_VAE + TRANSFORMER
    assert download_size(REPO_FILES, allow_patterns(include_transformer_weights=False)) == CONFIGS + ENCODERS_AND_VAE
    assert download_size([("model_index.json", None), ("vae/x.safetensors", 7)], allow_patterns()) == 7


class FakeHub:
    """Stands in for `snapshot_download` (returning a local folder) and the size lookup; records the calls."""

    def __init__(self, monkeypatch, folder: Path, error: Exception | None = None):
        import huggingface_hub

        self.folder, self.error, self.calls, self.size_lookups = folder, error, [], []
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(models, "_remote_files", self.remote_files)

    def snapshot_download(self, repo_id, **kwargs):
        self.calls.append(dict(kwargs, repo_id=repo_id))
        if self.error is not None:
            raise self.error
        return str(self.folder)

    def remote_files(self, repo_id, revision):
        self.size_lookups.append((repo_id, revision))
        return REPO_FILES


def test_hub_repo_is_downloaded_with_only_the_needed_files(tiny_checkpoint, monkeypatch, caplog):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = FakeHub(monkeypatch, tiny_checkpoint)
    with caplog.at_level(logging.INFO, logger="wan_animate"):
        pipe = load_pipeline(DEFAULT_MODEL_ID, revision="abc123", allow_cpu=True)
    assert runtime_info(pipe).device == "cpu"
    (call,) = hub.calls
    assert call["repo_id"] == DEFAULT_MODEL_ID and call["revision"] == "abc123"
    assert call["allow_patterns"] == allow_patterns() and call["local_files_only"] is False
    assert "transformer/*.safetensors" in call["allow_patterns"]
    assert not any(p.endswith((".bin", ".pth", ".md")) or p == "*" for p in call["allow_patterns"])
    assert hub.size_lookups == [(DEFAULT_MODEL_ID, "abc123")]
    size = CONFIGS + ENCODERS_AND_VAE + TRANSFORMER
    assert any(f"{size / 1e9:.1f} GB in the selected files" in r.getMessage() for r in caplog.records)


def test_offline_mode_uses_the_cache_without_a_size_lookup(tiny_checkpoint, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(monkeypatch, tiny_checkpoint)
    with caplog.at_level(logging.INFO, logger="wan_animate"):
        assert resolve_source(DEFAULT_MODEL_ID) == tiny_checkpoint
    assert hub.calls[0]["local_files_only"] is True and hub.size_lookups == []
    assert any("size check skipped" in r.getMessage() for r in caplog.records)


def test_offline_and_not_cached_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    FakeHub(monkeypatch, tmp_path, error=LocalEntryNotFoundError("not cached"))
    with pytest.raises(WanAnimateError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE is set"):
        resolve_source(DEFAULT_MODEL_ID)


def test_unknown_repo_is_a_user_error(tmp_path, monkeypatch):
    httpx2 = pytest.importorskip("httpx2")  # the HTTP client huggingface_hub's errors carry a response of
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/me/nothing"))
    FakeHub(monkeypatch, tmp_path, error=RepositoryNotFoundError("404", response=response))
    with pytest.raises(WanAnimateError, match="me/nothing was not found"):
        resolve_source("me/nothing")


def test_bad_local_sources(tmp_path):
    with pytest.raises(WanAnimateError, match="does not exist"):
        resolve_source(tmp_path / "missing" / "folder")
    with pytest.raises(WanAnimateError, match="no model_index.json"):
        resolve_source(tmp_path)


def test_download_progress_reaches_the_callback_without_a_tty():
    calls = []
    bar_class = models._progress_tqdm(lambda *a: calls.append(a))
    bar = bar_class(total=2_000_000_000, disable=True, name="huggingface_hub.snapshot_download", unit="B")
    bar.update(500_000_000)
    bar.update(1_000)  # same percent: not reported again
    bar.update(1_499_999_000)
    assert calls == [
        (500_000_000, 2_000_000_000, "Downloading model (0.5 GB of 2.0 GB)"),
        (2_000_000_000, 2_000_000_000, "Downloading model (2.0 GB of 2.0 GB)"),
    ]
    other = bar_class(total=10, disable=True, name="something.else")
    other.update(10)
    assert len(calls) == 2


# -- the bf16 copy of the transformer ----------------------------------------------------------------------


def test_bf16_copy_is_written_once_and_then_replaces_the_fp32_weights(tiny_checkpoint, tmp_path, hf_home):
    source = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, source)
    first = load_pipeline(source, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    copy = bf16_copy_dir(source)
    assert copy.is_relative_to(hf_home / "wan_animate") and copy.name == "transformer"
    assert "BF16" in _safetensors_dtypes(copy)  # (norms and tables diffusers keeps in fp32 stay F32)

    for shard in (source / "transformer").glob("*.safetensors"):  # the fp32 weights can no longer be read
        shard.unlink()
    second = load_pipeline(source, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    assert second.transformer.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(first.transformer.state_dict().items(), second.transformer.state_dict().items()):
        assert torch.equal(a, b), name


def test_bf16_copy_of_a_hub_repo_skips_the_fp32_download(tiny_checkpoint, tmp_path, monkeypatch, hf_home):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = FakeHub(monkeypatch, tiny_checkpoint)
    load_pipeline(DEFAULT_MODEL_ID, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    copy = bf16_copy_dir(DEFAULT_MODEL_ID)
    assert copy == hf_home / "wan_animate" / "Wan-AI--Wan2.2-Animate-14B-Diffusers--main" / "transformer"
    assert hub.calls[0]["allow_patterns"] == allow_patterns()

    snapshot = tmp_path / "snapshot"  # what the cache holds when the transformer's weights were skipped
    shutil.copytree(tiny_checkpoint, snapshot, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    shutil.copytree(tiny_checkpoint / "vae", snapshot / "vae", dirs_exist_ok=True)
    hub.folder = snapshot
    pipe = load_pipeline(DEFAULT_MODEL_ID, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    assert hub.calls[1]["allow_patterns"] == allow_patterns(include_transformer_weights=False)
    assert "transformer/config.json" in hub.calls[1]["allow_patterns"]
    assert pipe.transformer.dtype == torch.bfloat16


def test_bf16_copy_of_another_architecture_is_not_used(tiny_checkpoint, hf_home, caplog):
    load_pipeline(tiny_checkpoint, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    config_file = bf16_copy_dir(tiny_checkpoint) / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("motion_encoder_batch_size")  # a key only one side has is not a difference
    config["_diffusers_version"] = "0.0.1"
    config_file.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        load_pipeline(tiny_checkpoint, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    assert not any("does not match" in r.getMessage() for r in caplog.records)

    config["num_layers"] = 3  # another model: the copy must not be used
    config_file.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, dtype="bfloat16", keep_bf16_copy=True)
    assert any("does not match" in r.getMessage() for r in caplog.records)
    assert len(pipe.transformer.blocks) == tiny_transformer_config()["num_layers"]
    assert json.loads(config_file.read_text())["num_layers"] == 2  # the copy was rewritten from the source


def test_bf16_copy_needs_bf16_compute(tiny_checkpoint, hf_home, caplog):
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        load_pipeline(tiny_checkpoint, allow_cpu=True, keep_bf16_copy=True)  # float32 on the CPU
    assert not (hf_home / "wan_animate").exists()
    assert any("keep_bf16_copy ignored" in r.getMessage() for r in caplog.records)


# -- the one cached pipeline -------------------------------------------------------------------------------


class FakePipeline:
    def __init__(self, kwargs):
        self.kwargs, self.hooks_removed = kwargs, False

    def remove_all_hooks(self):
        self.hooks_removed = True


def test_get_pipeline_caches_one_and_replaces_it(monkeypatch):
    loads = []

    def fake_load(**kwargs):
        loads.append(kwargs)
        return FakePipeline(kwargs)

    monkeypatch.setattr(models, "load_pipeline", fake_load)
    try:
        first = get_pipeline(source="folder", dtype="bf16", allow_cpu=True)
        assert get_pipeline(source="folder", dtype="bfloat16", allow_cpu=True, progress=print) is first
        assert models.cached_pipeline() is first and len(loads) == 1
        second = get_pipeline(source="folder", dtype="float32", allow_cpu=True)
        assert second is not first and len(loads) == 2
        assert first.hooks_removed  # the replaced pipeline was freed
        assert models.cached_pipeline() is second
    finally:
        clear_pipeline_cache()
    assert models.cached_pipeline() is None and second.hooks_removed


def test_describe_runtime(tiny_checkpoint):
    assert describe_runtime(source=str(tiny_checkpoint)).startswith("Not available: No CUDA GPU found")
    bad_dtype = describe_runtime(source=str(tiny_checkpoint), dtype="int4", allow_cpu=True)
    assert bad_dtype.startswith("Not available: Unknown dtype")
    planned = describe_runtime(source=str(tiny_checkpoint), allow_cpu=True)
    assert "CPU" in planned and "not loaded yet" in planned
    try:
        pipe = get_pipeline(source=str(tiny_checkpoint), allow_cpu=True)
        assert describe_runtime(source=str(tiny_checkpoint), allow_cpu=True) == runtime_info(pipe).summary()
    finally:
        clear_pipeline_cache()


@pytest.mark.parametrize(
    "mode,budget_gib,expected",
    [("none", 80, True), ("none", 75, True), ("none", 70, False), ("group", 80, False), ("sequential", 141, False)],
)
def test_blocks_are_compiled_by_default_only_all_on_a_large_gpu(mode, budget_gib, expected):
    assert models.should_compile(mode, int(budget_gib * GiB)) is expected


def test_compiled_blocks_give_the_same_video_also_after_a_lora_switch(tiny_checkpoint, tmp_path):
    """`compile_blocks=True` really compiles (torch.compile, inductor on the CPU) and changes no output, also when
    a LoRA is loaded and switched on after compilation (which makes dynamo recompile)."""
    from wan_animate.demo.loras import build_tiny_fast_lora
    from tests.test_generate import make_conditioning
    from wan_animate.generate import GenerationSettings, generate
    from wan_animate.lora import load_lora

    lora = build_tiny_fast_lora(tiny_checkpoint, tmp_path / "lora.safetensors")
    conditioning = make_conditioning("animate", 5)
    videos = {}
    for compiled in (False, True):
        pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, compile_blocks=compiled)
        assert pipe.wan_runtime.compiled is compiled
        assert ("compiled" in pipe.wan_runtime.summary()) is compiled
        assert all(getattr(block, "_compiled_call_impl", None) is not None for block in pipe.transformer.blocks) is compiled
        plain = generate(pipe, conditioning, GenerationSettings(num_inference_steps=2, segment_frames=5, seed=0)).frames
        load_lora(pipe, str(lora), adapter_name="extra", weight=1.0)
        with_lora = generate(
            pipe, conditioning, GenerationSettings(num_inference_steps=2, segment_frames=5, seed=0, lora_weights={"extra": 1.0})
        ).frames
        videos[compiled] = plain, with_lora
    assert np.abs(videos[False][0].astype(int) - videos[False][1]).max() > 0  # the LoRA changes the video
    for eager, compiled in zip(videos[False], videos[True]):
        assert np.abs(eager.astype(int) - compiled).max() <= 1


def test_vae_tiling_can_be_asked_for(tiny_checkpoint):
    pipe = load_pipeline(tiny_checkpoint, allow_cpu=True, vae_tiling=True)
    assert pipe.vae.use_tiling and pipe.wan_runtime.vae_tiling and "VAE tiling" in pipe.wan_runtime.summary()
    assert not load_pipeline(tiny_checkpoint, allow_cpu=True).vae.use_tiling  # auto: no tiling on the CPU
