"""LoRA loading: upstream's relighting LoRA and a ComfyUI/Kijai-format Wan LoRA on a tiny transformer.

Each test writes a random LoRA file in the real format, loads it through the same function as the real files,
and compares every targeted layer with W + weight * (alpha / r) * B @ A computed by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel
from safetensors.torch import save_file

import wan_animate.lora as lora
from wan_animate.demo.checkpoint import tiny_transformer_config
from wan_animate.errors import WanAnimateError
from wan_animate.lora import (
    BLOCK_MODULE_MAP,
    RELIGHT_ADAPTER,
    RELIGHT_ALPHA,
    RELIGHT_FILE,
    RELIGHT_RANK,
    RELIGHT_REPO,
    active_lora_weights,
    convert_relighting_state_dict,
    load_lora,
    load_relighting_lora,
    set_lora_weights,
)


def _pipeline() -> WanAnimatePipeline:
    """A pipeline whose only component is a tiny random transformer: LoRA loading needs nothing else."""
    torch.manual_seed(0)
    transformer = WanAnimateTransformer3DModel(**tiny_transformer_config()).eval()
    return WanAnimatePipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=None, image_processor=None, image_encoder=None,
        transformer=transformer,
    )


def _targets(transformer: torch.nn.Module) -> dict[str, str]:
    """Original Wan module name -> diffusers module name for every Linear upstream's relighting rule targets."""
    found = {}
    for block in range(len(transformer.blocks)):
        for original, diffusers_name in BLOCK_MODULE_MAP.items():
            if isinstance(_submodule(transformer, f"blocks.{block}.{diffusers_name}"), torch.nn.Linear):
                found[f"blocks.{block}.{original}"] = f"blocks.{block}.{diffusers_name}"
    return found


def _submodule(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _base_weights(transformer: torch.nn.Module, names) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    modules = {name: transformer.get_submodule(name) for name in names}
    return {name: (m.weight.detach().clone(), m.bias.detach().clone()) for name, m in modules.items()}


def _relight_state_dict(transformer: torch.nn.Module, rank: int = RELIGHT_RANK, prefix: str = "") -> dict:
    """Random factors in upstream's PEFT format (original names, no adapter name, no alpha)."""
    generator = torch.Generator().manual_seed(1)
    state_dict = {}
    for original, name in _targets(transformer).items():
        linear = transformer.get_submodule(name)
        down = torch.randn(rank, linear.in_features, generator=generator)
        up = torch.randn(linear.out_features, rank, generator=generator)
        state_dict[f"{prefix}{original}.lora_A.weight"] = down * 0.05
        state_dict[f"{prefix}{original}.lora_B.weight"] = up * 0.05
    return state_dict


def _save_relight(tmp_path, state_dict: dict):
    path = tmp_path / RELIGHT_FILE
    torch.save({"state_dict": state_dict}, path)
    return path


def _assert_effective(transformer, base, deltas: dict[str, torch.Tensor]) -> None:
    """Each module's output equals a plain linear layer with weight W + delta (delta absent = W)."""
    probe = torch.randn(3, max(w.shape[1] for w, _ in base.values()), generator=torch.Generator().manual_seed(2))
    for name, (weight, bias) in base.items():
        x = probe[:, : weight.shape[1]]
        expected = F.linear(x, weight + deltas.get(name, torch.zeros_like(weight)), bias)
        with torch.no_grad():
            actual = transformer.get_submodule(name)(x)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=f"effective weight of {name}")


def test_relighting_lora_applies_w_plus_scaled_ba_to_every_target(tmp_path):
    pipe = _pipeline()
    transformer = pipe.transformer
    targets = _targets(transformer)
    assert len(targets) == 12 * len(transformer.blocks)  # q,k,v,o x2, k_img, v_img, ffn.0, ffn.2 per block
    base = _base_weights(transformer, targets.values())
    state_dict = _relight_state_dict(transformer)
    path = _save_relight(tmp_path, state_dict)

    assert load_relighting_lora(pipe, path) == RELIGHT_ADAPTER
    assert pipe.get_list_adapters() == {"transformer": [RELIGHT_ADAPTER]}
    assert active_lora_weights(pipe) == {RELIGHT_ADAPTER: 1.0}
    assert (RELIGHT_RANK, RELIGHT_ALPHA) == (128, 128.0)  # upstream's LoraConfig(r=128, lora_alpha=128)
    scale = 128 / 128
    deltas = {
        name: scale * state_dict[f"{original}.lora_B.weight"] @ state_dict[f"{original}.lora_A.weight"]
        for original, name in targets.items()
    }
    assert all(delta.abs().max() > 1e-3 for delta in deltas.values())  # the LoRA changes every layer
    _assert_effective(transformer, base, deltas)
    # The layers the rule leaves alone stay untouched.
    untouched = ["proj_out", "face_adapter.0.to_q", "condition_embedder.time_proj"]
    _assert_effective(transformer, _base_weights(transformer, untouched), {})

    set_lora_weights(pipe, {RELIGHT_ADAPTER: 0.5})
    _assert_effective(transformer, base, {name: 0.5 * delta for name, delta in deltas.items()})

    set_lora_weights(pipe, {RELIGHT_ADAPTER: 0.0})
    assert active_lora_weights(pipe) == {}
    _assert_effective(transformer, base, {})

    set_lora_weights(pipe, {})
    _assert_effective(transformer, base, {})

    set_lora_weights(pipe, {RELIGHT_ADAPTER: 1.0})  # back on after being disabled
    _assert_effective(transformer, base, deltas)


def test_relighting_weight_at_load_scales_the_delta(tmp_path):
    pipe = _pipeline()
    transformer = pipe.transformer
    name = "blocks.0.attn2.add_k_proj"
    base = _base_weights(transformer, [name])
    state_dict = _relight_state_dict(transformer, prefix="base_model.model.")  # PEFT's wrapper prefix
    load_relighting_lora(pipe, _save_relight(tmp_path, state_dict), weight=0.5)

    delta = state_dict["base_model.model.blocks.0.cross_attn.k_img.lora_B.weight"] @ state_dict[
        "base_model.model.blocks.0.cross_attn.k_img.lora_A.weight"
    ]
    _assert_effective(transformer, base, {name: 0.5 * delta})
    assert active_lora_weights(pipe) == {RELIGHT_ADAPTER: 0.5}


def test_relighting_default_source_is_the_hub_file(tmp_path, monkeypatch):
    pipe = _pipeline()
    path = _save_relight(tmp_path, _relight_state_dict(pipe.transformer))
    calls = []

    def fake_download(repo_id: str, filename: str) -> str:
        calls.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(lora, "hf_hub_download", fake_download)
    load_relighting_lora(pipe)
    assert calls == [(RELIGHT_REPO, RELIGHT_FILE)]
    # A local folder holding the file (an upstream checkpoint folder) is used as is, without the hub.
    other = _pipeline()
    load_relighting_lora(other, tmp_path)
    assert calls == [(RELIGHT_REPO, RELIGHT_FILE)]
    assert RELIGHT_ADAPTER in other.get_list_adapters()["transformer"]


def test_relighting_prefixes_map_to_the_same_keys():
    transformer = _pipeline().transformer
    plain = convert_relighting_state_dict(_relight_state_dict(transformer), transformer)
    assert "blocks.1.ffn.net.0.proj.lora_A.weight" in plain
    assert "blocks.0.attn1.to_out.0.lora_B.weight" in plain
    for prefix in ("base_model.model.", "diffusion_model."):
        prefixed = convert_relighting_state_dict(_relight_state_dict(transformer, prefix=prefix), transformer)
        assert prefixed.keys() == plain.keys()
        assert all(torch.equal(prefixed[key], plain[key]) for key in plain)


@pytest.mark.parametrize(
    "extra_key,shape,message",
    [
        ("blocks.0.norm3.lora_A.weight", (RELIGHT_RANK, 16), "blocks.0.norm3.lora_A.weight"),
        ("face_adapter.fuser_blocks.0.linear1_kv.lora_A.weight", (RELIGHT_RANK, 16), "face_adapter.fuser_blocks"),
        ("blocks.0.self_attn.q.lora_A.default.weight", (RELIGHT_RANK, 16), "self_attn.q.lora_A.default.weight"),
        ("blocks.99.self_attn.q.lora_A.weight", (RELIGHT_RANK, 16), "blocks.99.attn1.to_q"),
    ],
)
def test_relighting_refuses_keys_it_cannot_place(tmp_path, extra_key, shape, message):
    pipe = _pipeline()
    state_dict = _relight_state_dict(pipe.transformer)
    state_dict[extra_key] = torch.zeros(shape)
    if extra_key.startswith("blocks.99"):  # a missing target module, with a complete pair
        state_dict["blocks.99.self_attn.q.lora_B.weight"] = torch.zeros(16, RELIGHT_RANK)
    with pytest.raises(WanAnimateError, match=message):
        load_relighting_lora(pipe, _save_relight(tmp_path, state_dict))
    assert pipe.get_list_adapters() == {}  # nothing half-loaded


def test_relighting_refuses_a_transformer_without_image_projections():
    config = dict(tiny_transformer_config(), added_kv_proj_dim=None)
    transformer = WanAnimateTransformer3DModel(**config)
    full = _pipeline().transformer
    with pytest.raises(WanAnimateError, match="attn2.add_k_proj"):
        convert_relighting_state_dict(_relight_state_dict(full), transformer)


def test_relighting_refuses_wrong_rank_missing_partner_and_shape():
    transformer = _pipeline().transformer
    with pytest.raises(WanAnimateError, match=f"rank {RELIGHT_RANK}"):
        convert_relighting_state_dict(_relight_state_dict(transformer, rank=4), transformer)

    lonely = _relight_state_dict(transformer)
    del lonely["blocks.1.ffn.2.lora_B.weight"]
    with pytest.raises(WanAnimateError, match="partner is missing: blocks.1.ffn.net.2.lora_A.weight"):
        convert_relighting_state_dict(lonely, transformer)

    wide = _relight_state_dict(transformer)
    wide["blocks.0.ffn.0.lora_A.weight"] = torch.zeros(RELIGHT_RANK, 7)
    with pytest.raises(WanAnimateError, match="shapes that do not fit: blocks.0.ffn.net.0.proj"):
        convert_relighting_state_dict(wide, transformer)


def test_relighting_file_needs_its_state_dict_entry(tmp_path):
    pipe = _pipeline()
    path = tmp_path / "bare.ckpt"
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(WanAnimateError, match="not tensors"):
        load_relighting_lora(pipe, path)
    with pytest.raises(WanAnimateError, match="not found"):
        load_relighting_lora(pipe, tmp_path / "absent.ckpt")


def test_relighting_twice_is_refused(tmp_path):
    pipe = _pipeline()
    path = _save_relight(tmp_path, _relight_state_dict(pipe.transformer))
    load_relighting_lora(pipe, path)
    with pytest.raises(WanAnimateError, match="already loaded"):
        load_relighting_lora(pipe, path)


def test_injection_check_catches_tensors_that_did_not_land(tmp_path):
    pipe = _pipeline()
    state_dict = _relight_state_dict(pipe.transformer)
    load_relighting_lora(pipe, _save_relight(tmp_path, state_dict))
    expected = convert_relighting_state_dict(state_dict, pipe.transformer)
    lora._verify_injection(pipe.transformer, RELIGHT_ADAPTER, expected)
    with torch.no_grad():
        pipe.transformer.blocks[1].attn1.to_v.lora_B[RELIGHT_ADAPTER].weight.zero_()
    with pytest.raises(WanAnimateError, match="wrong values: blocks.1.attn1.to_v.lora_B.weight"):
        lora._verify_injection(pipe.transformer, RELIGHT_ADAPTER, expected)
    with pytest.raises(WanAnimateError, match="unexpected: blocks.0.attn1.to_q.lora_A.weight"):
        lora._verify_injection(
            pipe.transformer, RELIGHT_ADAPTER, {k: v for k, v in expected.items() if "blocks.0.attn1.to_q." not in k}
        )


def test_injection_check_reads_weights_kept_by_sequential_offload(tmp_path):
    from accelerate import cpu_offload

    pipe = _pipeline()
    state_dict = _relight_state_dict(pipe.transformer)
    name = "blocks.1.attn2.to_v"
    base = _base_weights(pipe.transformer, [name])
    load_relighting_lora(pipe, _save_relight(tmp_path, state_dict))
    # Sequential offload leaves meta tensors on the modules and the values in accelerate's hooks.
    cpu_offload(pipe.transformer, execution_device=torch.device("cpu"))
    assert pipe.transformer.get_submodule(name).lora_A[RELIGHT_ADAPTER].weight.is_meta
    expected = convert_relighting_state_dict(state_dict, pipe.transformer)
    lora._verify_injection(pipe.transformer, RELIGHT_ADAPTER, expected)
    delta = state_dict["blocks.1.cross_attn.v.lora_B.weight"] @ state_dict["blocks.1.cross_attn.v.lora_A.weight"]
    _assert_effective(pipe.transformer, base, {name: delta})


def _kijai_state_dict(transformer, rank: int = 4, alpha: float = 2.0) -> dict:
    """A few-step-LoRA-like file in ComfyUI/Kijai format: lora_down / lora_up / alpha under diffusion_model."""
    generator = torch.Generator().manual_seed(3)
    state_dict = {}
    for original in ("self_attn.q", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.2"):
        for block in range(len(transformer.blocks)):
            linear = transformer.get_submodule(f"blocks.{block}.{BLOCK_MODULE_MAP[original]}")
            stem = f"diffusion_model.blocks.{block}.{original}"
            state_dict[f"{stem}.lora_down.weight"] = torch.randn(rank, linear.in_features, generator=generator)
            state_dict[f"{stem}.lora_up.weight"] = torch.randn(linear.out_features, rank, generator=generator)
            state_dict[f"{stem}.alpha"] = torch.tensor(alpha)
    return state_dict


def test_kijai_lora_applies_alpha_over_rank_and_stacks_with_relighting(tmp_path):
    pipe = _pipeline()
    transformer = pipe.transformer
    state_dict = _kijai_state_dict(transformer, rank=4, alpha=2.0)
    save_file(state_dict, tmp_path / "fast.safetensors")
    relight = _relight_state_dict(transformer)
    names = ["blocks.0.attn1.to_q", "blocks.1.attn2.add_v_proj", "blocks.1.ffn.net.2", "blocks.0.attn2.to_k"]
    base = _base_weights(transformer, names)

    load_relighting_lora(pipe, _save_relight(tmp_path, relight), weight=0.0)
    assert load_lora(pipe, str(tmp_path), weight_name="fast.safetensors", adapter_name="fast", weight=0.7) == "fast"
    assert active_lora_weights(pipe) == pytest.approx({"fast": 0.7})

    def fast(stem: str) -> torch.Tensor:  # alpha / r = 0.5
        stem = f"diffusion_model.{stem}"
        return 0.5 * state_dict[f"{stem}.lora_up.weight"] @ state_dict[f"{stem}.lora_down.weight"]

    def relit(stem: str) -> torch.Tensor:
        return relight[f"{stem}.lora_B.weight"] @ relight[f"{stem}.lora_A.weight"]

    pairs = {
        "blocks.0.attn1.to_q": "blocks.0.self_attn.q",
        "blocks.1.attn2.add_v_proj": "blocks.1.cross_attn.v_img",
        "blocks.1.ffn.net.2": "blocks.1.ffn.2",
    }
    fast_deltas = {name: fast(original) for name, original in pairs.items()}
    _assert_effective(transformer, base, {name: 0.7 * delta for name, delta in fast_deltas.items()})

    set_lora_weights(pipe, {"fast": 1.0, RELIGHT_ADAPTER: 1.0})
    both = {name: fast_deltas[name] + relit(original) for name, original in pairs.items()}
    both["blocks.0.attn2.to_k"] = relit("blocks.0.cross_attn.k")
    _assert_effective(transformer, base, both)

    with pytest.raises(WanAnimateError, match="not loaded: typo"):
        set_lora_weights(pipe, {"typo": 1.0})


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"diffusion_model.blocks.0.norm3.diff": torch.ones(16)}, "blocks.0.norm3.diff"),
        ({"diffusion_model.blocks.0.self_attn.q.diff": torch.ones(16, 16)}, "blocks.0.self_attn.q.diff"),
        ({"diffusion_model.face_adapter.fuser_blocks.0.linear2.lora_down.weight": torch.ones(4, 16)}, "face_adapter"),
    ],
)
def test_kijai_lora_refuses_keys_that_would_go_unused(tmp_path, extra, message):
    pipe = _pipeline()
    state_dict = {**_kijai_state_dict(pipe.transformer), **extra}
    save_file(state_dict, tmp_path / "bad.safetensors")
    with pytest.raises(WanAnimateError, match=message):
        load_lora(pipe, str(tmp_path / "bad.safetensors"), adapter_name="bad")
    assert pipe.get_list_adapters() == {}


def test_kijai_lora_allows_zero_norm_diffs(tmp_path):
    pipe = _pipeline()
    state_dict = {**_kijai_state_dict(pipe.transformer), "diffusion_model.blocks.0.norm3.diff": torch.zeros(16)}
    save_file(state_dict, tmp_path / "ok.safetensors")
    load_lora(pipe, str(tmp_path / "ok.safetensors"), adapter_name="ok")
    assert pipe.get_list_adapters() == {"transformer": ["ok"]}


def test_lora_source_errors_say_what_to_do(tmp_path):
    pipe = _pipeline()
    with pytest.raises(WanAnimateError, match="not found"):
        load_lora(pipe, str(tmp_path / "missing.safetensors"), adapter_name="x")
    with pytest.raises(WanAnimateError, match="give the LoRA's file name"):
        load_lora(pipe, "someone/wan-loras", adapter_name="x")
    with pytest.raises(WanAnimateError, match="folder"):
        load_lora(pipe, str(tmp_path), adapter_name="x")


def test_musubi_lora_is_converted_by_diffusers(tmp_path):
    pipe = _pipeline()
    transformer = pipe.transformer
    generator = torch.Generator().manual_seed(4)
    state_dict = {}
    for original, name in _targets(transformer).items():  # musubi files cover every block Linear
        linear = transformer.get_submodule(name)
        stem = "lora_unet_" + original.replace(".", "_")
        state_dict[f"{stem}.lora_down.weight"] = torch.randn(2, linear.in_features, generator=generator)
        state_dict[f"{stem}.lora_up.weight"] = torch.randn(linear.out_features, 2, generator=generator)
        state_dict[f"{stem}.alpha"] = torch.tensor(1.0)
    save_file(state_dict, tmp_path / "musubi.safetensors")
    name = "blocks.1.attn1.to_out.0"
    base = _base_weights(transformer, [name])
    load_lora(pipe, str(tmp_path / "musubi.safetensors"), adapter_name="musubi")
    stem = "lora_unet_blocks_1_self_attn_o"
    delta = 0.5 * state_dict[f"{stem}.lora_up.weight"] @ state_dict[f"{stem}.lora_down.weight"]  # alpha 1 / rank 2
    _assert_effective(transformer, base, {name: delta})


def test_diffusers_lora_keeps_the_alpha_of_its_metadata(tmp_path):
    pipe = _pipeline()
    transformer = pipe.transformer
    name = "blocks.0.ffn.net.0.proj"
    linear = transformer.get_submodule(name)
    generator = torch.Generator().manual_seed(5)
    state_dict = {
        f"transformer.{name}.lora_A.weight": torch.randn(4, linear.in_features, generator=generator),
        f"transformer.{name}.lora_B.weight": torch.randn(linear.out_features, 4, generator=generator),
    }
    config = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.target_modules": [name]}
    save_file(state_dict, tmp_path / "diffusers.safetensors", metadata={"lora_adapter_metadata": json.dumps(config)})
    base = _base_weights(transformer, [name])
    load_lora(pipe, str(tmp_path / "diffusers.safetensors"), adapter_name="styled", weight=0.5)
    down, up = state_dict[f"transformer.{name}.lora_A.weight"], state_dict[f"transformer.{name}.lora_B.weight"]
    delta = 0.5 * 2.0 * up @ down  # weight 0.5, alpha 8 / rank 4
    _assert_effective(transformer, base, {name: delta})
