"""The shapes demo model: its batched caption encoding is the host's, its file round-trips
(fp16, vocabulary rows), bad files are named, and the demo loader reads it (its trainer
and evaluation commands: tests/e2e/test_lab_commands.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def shapes_model(host):
    """The lab's half: caption encoding, saving."""
    from maskattn_lab import shapes_model
    return shapes_model


@pytest.fixture(scope="module")
def demo_models(host):
    """The product's half: building and loading."""
    from comfyui_maskattn.nodes import demo_models
    return demo_models


@pytest.fixture(scope="module", params=["sdxl", "sd2"])
def fresh(demo_models, request):
    """A randomly initialised shapes model (the architecture, not the shipped weights) of
    SDXL's family and of SD2.x's (Endo's)."""
    config = demo_models.ShapesModelConfig.for_family(request.param, train={"note": "test"})
    return config, *demo_models.build_shapes_model(config, seed=3)


def token_table(clip, encoder: str):
    return getattr(clip.cond_stage_model, f"clip_{encoder}").transformer.text_model.embeddings.token_embedding.weight


def last_encoder(config) -> str:
    """clip_g for SDXL (whose pooled output is SDXL's), clip_h for SD2.x."""
    return "g" if config.family == "sdxl" else "h"


def test_batched_caption_encoding_is_the_hosts(shapes_model, fresh):
    _, _, clip, _ = fresh
    captions = ["a red circle", "", "a blue square, a green triangle and a yellow circle"]
    with torch.no_grad():
        context, pooled = shapes_model.encode_captions(clip, captions)
    for i, caption in enumerate(captions):
        cond, pool = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        torch.testing.assert_close(context[i:i + 1], cond, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled[i:i + 1], pool, rtol=1e-5, atol=1e-5)


def test_encoding_is_differentiable_in_the_text_encoders(shapes_model, fresh):
    config, _, clip, _ = fresh
    table = token_table(clip, last_encoder(config))
    table.requires_grad_(True)
    try:
        context, _ = shapes_model.encode_captions(clip, ["a red circle"])
        context.sum().backward()            # no context manager: encode_captions makes it legal
        assert table.grad is not None and table.grad.abs().sum() > 0
    finally:
        table.requires_grad_(False)
        table.grad = None


def test_file_round_trip(shapes_model, demo_models, fresh, tmp_path):
    config, model, clip, vae = fresh
    path = tmp_path / "m.safetensors"
    shapes_model.save(path, config, model, clip, vae)
    # SDXL 17.7 MB, SD2.x 22.1 MB (a fourth UNet level, attention at full resolution); full
    # token tables would add 3-6 MB, fp32 double it
    assert path.stat().st_size < {"sdxl": 20e6, "sd2": 25e6}[config.family]
    loaded_model, loaded_clip, loaded_vae = demo_models.load_shapes_model(path)
    assert demo_models.read_config(path) == config
    import comfy.model_base        # the parameterization comes back with the file
    assert loaded_model.model.model_type == model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    saved = model.model.diffusion_model.state_dict()
    for key, value in loaded_model.model.diffusion_model.state_dict().items():
        torch.testing.assert_close(value, saved[key].half().float())
    with torch.no_grad():       # the shapes vocabulary encodes as trained, up to fp16
        a = shapes_model.encode_captions(clip, ["a purple triangle and a orange square"])[0]
        b = shapes_model.encode_captions(loaded_clip, ["a purple triangle and a orange square"])[0]
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    table = token_table(loaded_clip, last_encoder(config))
    kept = shapes_model.vocabulary_rows(clip)
    assert table[kept].abs().sum(1).gt(0).all()
    assert table.abs().sum(1).gt(0).sum() == len(kept)      # other tokens: zero


def test_bad_files_are_named(shapes_model, demo_models, fresh, tmp_path):
    import safetensors.torch
    config, model, clip, vae = fresh
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="corrupt.safetensors: not a readable safetensors file"):
        demo_models.load_shapes_model(corrupt)
    other = tmp_path / "heads.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "maskattn-heads"})
    with pytest.raises(ValueError, match="heads.safetensors: not a shapes demo model"):
        demo_models.load_shapes_model(other)
    wrong = tmp_path / "wrong.safetensors"
    shapes_model.save(wrong, config, model, clip, vae)
    weights = safetensors.torch.load_file(str(wrong))
    with safetensors.safe_open(str(wrong), framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in weights if k.endswith("out.2.weight"))
    weights[key] = weights[key][:, :2].contiguous()
    safetensors.torch.save_file(weights, str(wrong), metadata=metadata)
    with pytest.raises(ValueError, match="wrong.safetensors: weights do not fit the recorded config"):
        demo_models.load_shapes_model(wrong)


@pytest.fixture(scope="module")
def saved_random(shapes_model, fresh, tmp_path_factory):
    """A shapes model file with random weights: the same code path as the trained one."""
    config, model, clip, vae = fresh
    path = tmp_path_factory.mktemp("shapes") / "shapes_sdxl.safetensors"
    shapes_model.save(path, config, model, clip, vae)
    return path


def test_demo_loader_loads_the_shapes_model_and_names_a_missing_file(host, demo_models, saved_random, monkeypatch):
    import nodes
    from comfyui_maskattn.nodes.nodes_demo import SHAPES, SHAPES_SD2, MaskAttnLoadDemoModel
    monkeypatch.setattr(demo_models, "SHIPPED", saved_random.parent / "absent.safetensors")
    monkeypatch.setattr(demo_models, "SHIPPED_SD2", saved_random.parent / "absent_sd2.safetensors")
    for key, name in ((SHAPES, "absent"), (SHAPES_SD2, "absent_sd2")):
        with pytest.raises(FileNotFoundError, match=f"Load MaskAttn Demo Model \\(model\\): .*{name}.safetensors is missing"):
            MaskAttnLoadDemoModel.execute(key, 0)
    monkeypatch.setattr(demo_models, "SHIPPED", saved_random)
    model, clip, vae = MaskAttnLoadDemoModel.execute(SHAPES, 0).result
    positive = nodes.CLIPTextEncode().encode(clip, "a red circle")[0]
    with torch.inference_mode():
        latent = nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", positive, positive,
                                       {"samples": torch.zeros(1, 4, 8, 8)})[0]
        image = nodes.VAEDecode().decode(vae, latent)[0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_demo_loader_keys_and_the_values_older_workflows_saved(run_graph):
    """The combo stores short keys; the long values that workflows saved before still
    validate and load the same model; anything else is refused at validation, named."""
    from comfyui_maskattn.nodes.nodes_demo import DEMO_MODELS, LEGACY_VALUES

    def graph(value):
        return {"1": {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": value, "seed": 0}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
                "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "4": {"class_type": "KSampler", "inputs": {
                    "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
                    "seed": 0, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                    "denoise": 1.0}},
                "5": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
                "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}}}

    assert DEMO_MODELS == ("shapes-sdxl", "shapes-sd2", "tiny-sdxl-random", "tiny-sd1-random", "tiny-sd2-random",
                           "tiny-sd2-v-random")
    assert set(LEGACY_VALUES.values()) == {"shapes-sdxl", "tiny-sdxl-random"}   # the two that had long values
    legacy = next(old for old, key in LEGACY_VALUES.items() if key == "tiny-sdxl-random")
    for value in ("tiny-sdxl-random", legacy):
        assert len(run_graph(graph(value))["5"]["images"]) == 1
    with pytest.raises(AssertionError, match="prompt invalid.*unknown model 'tiny SDXL'"):     # at validation
        run_graph(graph("tiny SDXL"))
