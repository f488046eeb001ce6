"""The shapes demo model: its batched caption encoding is the host's, its file round-trips
(fp16, vocabulary rows), bad files are named, and its trainer runs and resumes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_model(host):
    from comfyui_maskattn.nodes import shapes_model
    return shapes_model


@pytest.fixture(scope="module")
def fresh(shapes_model):
    """A randomly initialised shapes model (the architecture, not the shipped weights)."""
    config = shapes_model.ShapesModelConfig(train={"note": "test"})
    return config, *shapes_model.build(config, seed=3)


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
    _, _, clip, _ = fresh
    table = clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight
    table.requires_grad_(True)
    try:
        context, _ = shapes_model.encode_captions(clip, ["a red circle"])
        context.sum().backward()            # no context manager: encode_captions makes it legal
        assert table.grad is not None and table.grad.abs().sum() > 0
    finally:
        table.requires_grad_(False)
        table.grad = None


def test_file_round_trip(shapes_model, fresh, tmp_path):
    config, model, clip, vae = fresh
    path = tmp_path / "m.safetensors"
    shapes_model.save(path, config, model, clip, vae)
    assert path.stat().st_size < 20e6      # 17.7 MB; full token tables would add 6.3 MB, fp32 double it
    loaded_model, loaded_clip, loaded_vae = shapes_model.load(path)
    assert shapes_model.read_config(path) == config
    import comfy.model_base        # the parameterization comes back with the file
    assert loaded_model.model.model_type == model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    saved = model.model.diffusion_model.state_dict()
    for key, value in loaded_model.model.diffusion_model.state_dict().items():
        torch.testing.assert_close(value, saved[key].half().float())
    with torch.no_grad():       # the shapes vocabulary encodes as trained, up to fp16
        a = shapes_model.encode_captions(clip, ["a purple triangle and a orange square"])[0]
        b = shapes_model.encode_captions(loaded_clip, ["a purple triangle and a orange square"])[0]
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    table = loaded_clip.cond_stage_model.clip_g.transformer.text_model.embeddings.token_embedding.weight
    kept = shapes_model.vocabulary_rows(clip)
    assert table[kept].abs().sum(1).gt(0).all()
    assert table.abs().sum(1).gt(0).sum() == len(kept)      # other tokens: zero


def test_bad_files_are_named(shapes_model, fresh, tmp_path):
    import safetensors.torch
    config, model, clip, vae = fresh
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="corrupt.safetensors: not a readable safetensors file"):
        shapes_model.load(corrupt)
    other = tmp_path / "heads.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "maskattn-heads"})
    with pytest.raises(ValueError, match="heads.safetensors: not a shapes demo model"):
        shapes_model.load(other)
    wrong = tmp_path / "wrong.safetensors"
    shapes_model.save(wrong, config, model, clip, vae)
    weights = safetensors.torch.load_file(str(wrong))
    with safetensors.safe_open(str(wrong), framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in weights if k.endswith("out.2.weight"))
    weights[key] = weights[key][:, :2].contiguous()
    safetensors.torch.save_file(weights, str(wrong), metadata=metadata)
    with pytest.raises(ValueError, match="wrong.safetensors: weights do not fit the recorded config"):
        shapes_model.load(wrong)


def test_trainer_runs_resumes_and_exports(host, tmp_path):
    def train(out, *extra, check=True):
        return subprocess.run([sys.executable, str(REPO / "scripts" / "train_shapes_model.py"), "--out", str(out),
                               "--vae-steps", "2", "--vae-batch", "2", "--batch-size", "2", "--pool", "64",
                               "--ceiling-scenes", "4", "--norm-scenes", "8", "--warmup", "1", *extra],
                              check=check, capture_output=True, text=True)

    def live(out):                                     # fp32 weights (the saved file is fp16 EMA)
        return torch.load(str(out) + ".resume.pt", weights_only=False)

    out = tmp_path / "m.safetensors"
    train(out, "--steps", "2", "--save-minutes", "0")      # a resume file after every step (183 MB: slow)
    first = live(out)
    assert first["step"] == 2 and first["vae_step"] == 2
    done = train(out, "--steps", "3", "--resume")
    assert "resuming: vae step 2, diffusion step 2" in done.stderr
    assert live(out)["step"] == 3
    from comfyui_maskattn.nodes import shapes_model
    config = shapes_model.read_config(out)
    assert config.train["steps"] == 3 and config.train["train_seed_base"] == 10_000_000
    assert config.train["step_targets"] == [2, 3]          # each continuation restarts the cosine: both kept
    ceiling = config.train["vae_ceiling"]              # measured once, after the VAE stage
    assert set(ceiling) == {"precision", "binding"} and all(0.0 <= v <= 1.0 for v in ceiling.values())
    assert "vae round trip of held-out scenes" in done.stderr

    # the same schedule in one command gives the same weights; straight to 3 steps does not
    at_once, straight = tmp_path / "at_once.safetensors", tmp_path / "straight.safetensors"
    train(at_once, "--steps", "2,3")
    train(straight, "--steps", "3")
    assert shapes_model.read_config(at_once).train["step_targets"] == [2, 3]
    continued, one_run, other = live(out)["unet"], live(at_once)["unet"], live(straight)["unet"]
    assert all(torch.equal(continued[k], one_run[k]) for k in continued)
    assert not all(torch.equal(continued[k], other[k]) for k in continued)
    bad = train(out, "--steps", "3,2", check=False)
    assert bad.returncode != 0 and "must be positive and rising" in bad.stderr


@pytest.fixture(scope="module")
def saved_random(shapes_model, fresh, tmp_path_factory):
    """A shapes model file with random weights: the same code path as the trained one."""
    config, model, clip, vae = fresh
    path = tmp_path_factory.mktemp("shapes") / "shapes_sdxl.safetensors"
    shapes_model.save(path, config, model, clip, vae)
    return path


def test_demo_loader_loads_the_shapes_model_and_names_a_missing_file(host_nodes, shapes_model, saved_random,
                                                                     monkeypatch):
    import nodes
    from comfyui_maskattn.nodes.nodes_demo import SHAPES, MaskAttnLoadDemoModel
    monkeypatch.setattr(shapes_model, "SHIPPED", saved_random.parent / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="Load MaskAttn Demo Model \\(model\\): .*absent.safetensors is missing"):
        MaskAttnLoadDemoModel.execute(SHAPES, 0)
    monkeypatch.setattr(shapes_model, "SHIPPED", saved_random)
    model, clip, vae = MaskAttnLoadDemoModel.execute(SHAPES, 0).result
    positive = nodes.CLIPTextEncode().encode(clip, "a red circle")[0]
    with torch.inference_mode():
        latent = nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", positive, positive,
                                       {"samples": torch.zeros(1, 4, 8, 8)})[0]
        image = nodes.VAEDecode().decode(vae, latent)[0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_evaluation_command_scores_rows(host, saved_random, tmp_path):
    """The evaluation runs rows through the nodes and the host's sampler and writes
    per-set records, the table with intervals, the grid and the quality rates; every
    image is kept, and --rescore scores the kept images again."""
    import json
    results, images = tmp_path / "eval", tmp_path / "images"
    command = [sys.executable, str(REPO / "scripts" / "evaluate_shapes.py"), "--model", str(saved_random),
               "--results", str(results), "--images", str(images), "--sets", "2", "--steps", "3"]
    rows = ["rendered scene through the VAE", "none", "swapping", "guidance a=0.08", "paint-with-words w'=0.3"]
    done = subprocess.run([*command, "--rows", ";".join(rows)], check=True, capture_output=True, text=True)
    assert "| guidance a=0.08 | 2 |" in done.stdout
    for row in ("rendered_scene_through_the_VAE", "none", "swapping", "guidance_a=0.08", "paint-with-words_w_=0.3"):
        records = [json.loads(line) for line in (results / f"{row}.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(0.0 <= r["miou"] <= 1.0 for r in records)
        assert sorted(p.stem for p in (images / row).glob("*.png")) == sorted(str(r["seed"]) for r in records)
    assert (tmp_path / "shapes_eval.md").read_text().count("\n| ") == 6
    assert (tmp_path / "shapes_eval_grid.png").is_file()

    path = results / "none.jsonl"
    scored = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "binding": -1.0, "miou": -1.0}) + "\n" for r in scored))
    subprocess.run([*command, "--rows", "none", "--rescore"], check=True, capture_output=True, text=True)
    assert [json.loads(line) for line in path.read_text().splitlines()] == scored
    (images / "none" / f"{scored[0]['seed']}.png").unlink()
    missing = subprocess.run([*command, "--rows", "none", "--rescore"], capture_output=True, text=True)
    assert missing.returncode != 0 and "none" in missing.stderr and "is missing" in missing.stderr

    from comfyui_maskattn.evaluation import shapes
    kinds = subprocess.run([sys.executable, str(REPO / "scripts" / "kind_errors.py"), "--rows", "swapping",
                            "--results", str(results), "--images", str(images)], check=True, capture_output=True,
                           text=True)
    named = sum(len(scene.shapes) for _, scene in shapes.held_out(2, (2, 4)))
    row = next(line for line in kinds.stdout.splitlines() if line.startswith("| swapping |")).split(" | ")
    assert int(row[1]) == named and abs(sum(map(float, row[2:6])) - 1.0) < 0.01     # every named object, once
    assert "A wrong kind picked at random would be another object's in " in kinds.stdout

    quality = subprocess.run([*command, "--quality", "2"], check=True, capture_output=True, text=True)
    assert "1-object prompts, named colour with the named kind:" in quality.stdout
    assert "(rendered scenes through the VAE: " in quality.stdout
    assert (tmp_path / "shapes_quality.md").read_text().startswith(f"model: {saved_random.name}, untrained\n")
