"""Heads made for another checkpoint of the same widths: the heads file records which
model they were trained on, and Apply Masked Cross-Attention warns (log and the node in
the UI), naming the file, when it gates another one; the same model in another dtype,
or loaded with a LoRA's weights applied in place elsewhere, is still the same; a file
without a fingerprint is accepted."""
from __future__ import annotations

import logging

import pytest
import torch

from comfyui_maskattn.maskattn_ops.heads import HeadSet, load_heads, save_heads

OTHER_MODEL = "was made for another model"
ATTN2_TO_K = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"   # site input.4.0
ATTN1_TO_K = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight"   # not read by heads


@pytest.fixture(scope="module")
def nodes_gating(host):
    from comfyui_maskattn.nodes import nodes_gating
    return nodes_gating


@pytest.fixture(scope="module")
def mid_sites(patching, tiny_models):
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    return select_sites(patching.discover_sites(tiny_models[0]), "mid-resolution")


def heads_file(folder, name, sites, made_for=None, patching=None):
    """A heads file (fresh heads) recording ``made_for``'s fingerprint, or none; read
    back as Load MaskAttn Heads reads it."""
    heads = HeadSet.for_sites(sites, training={"base": "demo:tiny"} if made_for is not None else {})
    if made_for is not None:
        heads.fingerprint = patching.model_fingerprint(made_for, heads.site_names)
    save_heads(heads, folder / name)
    with torch.inference_mode():
        return load_heads(folder / name)


def applied(nodes_gating, model, heads, caplog) -> list[str]:
    """Applies ``heads`` to ``model``; -> the warnings it logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="comfyui_maskattn"):
        nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(model, heads, 0.5, "hard", 0.0, 1.0, True)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_heads_on_their_own_model_say_nothing(nodes_gating, patching, tiny_models, mid_sites, tmp_path, caplog):
    heads = heads_file(tmp_path, "tiny_seed0.safetensors", mid_sites, tiny_models[0], patching)
    assert heads.fingerprint is not None
    assert applied(nodes_gating, tiny_models[0], heads, caplog) == []
    assert applied(nodes_gating, tiny_models[0].clone(), heads, caplog) == []


def test_heads_on_another_model_of_the_same_widths_warn_naming_the_file(
        nodes_gating, patching, tiny, tiny_models, mid_sites, tmp_path, caplog):
    heads = heads_file(tmp_path, "tiny_seed0.safetensors", mid_sites, tiny_models[0], patching)
    with torch.inference_mode():
        other = tiny.build_model(seed=1)                    # same sites and widths, other weights
    [warning] = applied(nodes_gating, other, heads, caplog)
    assert warning.startswith(f"Apply Masked Cross-Attention (heads): tiny_seed0.safetensors {OTHER_MODEL} "
                              f"(demo:tiny)")
    assert "still apply" in warning


def test_the_warning_shows_on_the_nodes_in_the_ui(nodes_gating, patching, tiny, tiny_models, mid_sites, tmp_path,
                                                   caplog, monkeypatch):
    """tell_user: the host's progress text, on the executing node."""
    import comfy_execution.utils
    import server
    texts = []

    class Ui:
        def send_progress_text(self, text, node_id, sid=None):
            texts.append((node_id, text))

    heads = heads_file(tmp_path, "tiny_seed0.safetensors", mid_sites, tiny_models[0], patching)
    with torch.inference_mode():
        other = tiny.build_model(seed=1)
    monkeypatch.setattr(server.PromptServer, "instance", Ui(), raising=False)
    with comfy_execution.utils.CurrentNodeContext("prompt", "7"):
        [warning] = applied(nodes_gating, other, heads, caplog)
    assert texts == [("7", warning)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_the_same_checkpoint_in_another_dtype_is_the_same_model(nodes_gating, patching, tiny, tiny_models, mid_sites,
                                                                tmp_path, caplog, dtype):
    heads = heads_file(tmp_path, "tiny_seed0.safetensors", mid_sites, tiny_models[0], patching)
    with torch.inference_mode():
        cast, other = tiny.build_model(seed=0, weight_dtype=dtype), tiny.build_model(seed=1, weight_dtype=dtype)
    assert applied(nodes_gating, cast, heads, caplog) == []
    assert len(applied(nodes_gating, other, heads, caplog)) == 1


def test_a_lora_at_the_gated_weights_is_another_model_loaded_or_not(nodes_gating, patching, tiny, mid_sites,
                                                                      tmp_path, caplog):
    """A weight patch on a gated site's to_k (as a LoRA adds it) makes another model, and
    one on self-attention does not; both whether the patches sit beside the weights or
    are applied in place (a loaded model), and the unpatched clone stays itself while a
    patched one is loaded."""
    import comfy.model_management
    with torch.inference_mode():
        base = tiny.build_model(seed=0)
    heads = heads_file(tmp_path, "tiny_seed0.safetensors", mid_sites, base, patching)
    delta = {key: torch.randn(base.model.state_dict()[key].shape) * 0.05 for key in (ATTN2_TO_K, ATTN1_TO_K)}
    at_gate, elsewhere = base.clone(), base.clone()
    assert at_gate.add_patches({ATTN2_TO_K: ("diff", (delta[ATTN2_TO_K],))}) == [ATTN2_TO_K]
    assert elsewhere.add_patches({ATTN1_TO_K: ("diff", (delta[ATTN1_TO_K],))}) == [ATTN1_TO_K]
    assert len(applied(nodes_gating, at_gate, heads, caplog)) == 1
    assert applied(nodes_gating, elsewhere, heads, caplog) == []
    try:
        comfy.model_management.load_models_gpu([at_gate], force_full_load=True)       # patched in place
        assert not torch.equal(base.model.state_dict()[ATTN2_TO_K], at_gate.backup[ATTN2_TO_K].weight)
        assert len(applied(nodes_gating, at_gate, heads, caplog)) == 1
        assert applied(nodes_gating, base, heads, caplog) == []
    finally:
        comfy.model_management.unload_all_models()


def test_a_file_without_a_fingerprint_is_accepted(nodes_gating, tiny, tiny_models, mid_sites, tmp_path, caplog):
    heads = heads_file(tmp_path, "older.safetensors", mid_sites)
    assert heads.fingerprint is None
    with torch.inference_mode():
        other = tiny.build_model(seed=1)
    for model in (tiny_models[0], other):
        assert applied(nodes_gating, model, heads, caplog) == []
        assert any("older.safetensors records no model fingerprint" in r.getMessage() for r in caplog.records)


def test_the_trainer_records_its_models_fingerprint(patching, tiny_models, pairs_dir, tmp_path):
    from maskattn_lab import train_heads
    out = tmp_path / "trained.safetensors"
    assert train_heads.main(["--demo-model", "tiny", "--pairs", str(pairs_dir), "--out", str(out), "--resolution",
                             "128", "--eval-pairs", "0", "--steps", "1", "--batch-size", "2"]) == 0
    heads = load_heads(out)
    assert heads.fingerprint == patching.model_fingerprint(tiny_models[0], heads.site_names)


def test_shipped_heads_record_the_shipped_model(patching, tiny, tiny_models):
    """The shapes heads were trained on the shipped shapes model and say so; the untrained
    tiny heads keep every token on any tiny model, so they record none."""
    from comfyui_maskattn.nodes import demo_models
    from comfyui_maskattn.nodes.model_folders import SHIPPED_HEADS
    with torch.inference_mode():
        shapes, _, _ = demo_models.load_shapes_model(demo_models.SHIPPED)
    for name in ("shapes_sdxl_heads.safetensors", "shapes_sdxl_heads_masksup.safetensors"):
        heads = load_heads(SHIPPED_HEADS / name)
        assert heads.fingerprint is not None, name
        assert heads.fingerprint.same_model(patching.model_fingerprint(shapes, heads.site_names)), name
    assert load_heads(SHIPPED_HEADS / "tiny_sdxl_untrained_heads.safetensors").fingerprint is None
