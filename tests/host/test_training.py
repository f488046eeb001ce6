"""The heads trainer on the tiny SDXL, in-process: the loss falls, the backbone stays
frozen, resume is exact, the data readers, mask supervision and the inspection
(torchrun with 2 processes: tests/e2e/test_lab_commands.py)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close


@pytest.fixture(scope="module")
def train_heads(host):
    """The trainer's command (its main) and loop."""
    from maskattn_lab import train_heads
    return train_heads


@pytest.fixture(scope="module")
def head_data(host):
    """The trainer's data readers and encoder (the folder's: the product's; COCO: the lab's)."""
    from types import SimpleNamespace

    from comfyui_maskattn.nodes import training_data
    from maskattn_lab import head_data
    return SimpleNamespace(**vars(training_data), pairs_from_coco=head_data.pairs_from_coco)


def cli(train_heads, pairs_dir, out, *extra):
    args = ["--demo-model", "tiny", "--pairs", str(pairs_dir), "--out", str(out), "--resolution", "128",
            "--eval-pairs", "0", "--log-every", "1", *map(str, extra)]
    assert train_heads.main(args) == 0
    from comfyui_maskattn.maskattn_ops.heads import load_heads
    return load_heads(out)


@pytest.fixture(scope="module")
def step_setup(head_data, tiny, patching, pairs_dir):
    """A fresh (non-inference) tiny model, its mid sites, and one encoded fixed batch."""
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    model, clip, vae = tiny.build_all(seed=0)
    sites = select_sites(patching.discover_sites(model), "mid-resolution")
    pairs = head_data.pairs_from_folder(pairs_dir)[:4]
    latent, context, y, _ = head_data.Encoder(model, clip, vae, 128)(pairs, torch.device("cpu"))
    noise, sigma = head_data.noise_and_sigma(model.model.model_sampling, latent, 0, 0, list(range(4)))
    return model, sites, (latent, noise, sigma, context, y)


def test_training_lowers_the_loss_and_touches_only_heads(step_setup):
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.nodes.head_training import HeadTrainingStep
    model, sites, batch = step_setup
    backbone_before = {k: v.clone() for k, v in model.model.state_dict().items()}
    torch.manual_seed(0)
    heads = HeadSet.for_sites(sites)
    step = HeadTrainingStep(model, heads, mode="hard")
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        before = step(*batch).item()
    for _ in range(15):
        optimizer.zero_grad()
        step(*batch).backward()
        assert all(p.grad is None for p in model.model.parameters())
        assert all(p.grad is not None for p in heads.parameters())
        optimizer.step()
    with torch.no_grad():
        after = step(*batch).item()
    assert after < 0.995 * before, (before, after)
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k


def test_loss_is_the_models_own_epsilon_mse(step_setup):
    """For an EPS model the loss equals || eps_pred - eps ||^2 computed by hand."""
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.nodes.head_training import HeadTrainingStep
    model, sites, (latent, noise, sigma, context, y) = step_setup
    step = HeadTrainingStep(model, HeadSet.for_sites(sites))
    base = model.model
    with torch.no_grad():
        loss = step(latent, noise, sigma, context, y)
        x = latent + noise * sigma[:, None, None, None]
        denoised = base.apply_model(x, sigma, c_crossattn=context, y=y,
                                    transformer_options={"cond_or_uncond": [0], "sigmas": sigma})
        eps_pred = (x - denoised) / sigma[:, None, None, None]
    assert_close(loss, (eps_pred - noise).pow(2).mean(), rtol=1e-4, atol=1e-6)


def test_cached_latents_are_the_encoded_ones_and_encoded_once(head_data, tiny, pairs_dir):
    model, clip, vae = tiny.build_all(seed=0)
    pairs = head_data.pairs_from_folder(pairs_dir)[:4]
    plain = head_data.Encoder(model, clip, vae, 128)
    cached = head_data.Encoder(model, clip, vae, 128, cache_latents=True)
    first = cached([pairs[0], pairs[1]], torch.device("cpu"))[0]
    encoded = []
    vae_encode = vae.encode
    vae.encode = lambda images: encoded.append(len(images)) or vae_encode(images)   # count, on this test's own VAE
    mixed = cached([pairs[1], pairs[2], pairs[0]], torch.device("cpu"))[0]
    assert encoded == [1]                                   # only pairs[2] was new
    torch.testing.assert_close(mixed[[2, 0]], first)
    torch.testing.assert_close(mixed, plain([pairs[1], pairs[2], pairs[0]], torch.device("cpu"))[0],
                               rtol=1e-5, atol=1e-5)


def test_resume_continues_exactly(train_heads, pairs_dir, tmp_path):
    straight = cli(train_heads, pairs_dir, tmp_path / "straight.safetensors", "--steps", 4, "--batch-size", 2)
    cli(train_heads, pairs_dir, tmp_path / "resumed.safetensors", "--steps", 2, "--batch-size", 2, "--checkpoint-every", 2)
    resumed = cli(train_heads, pairs_dir, tmp_path / "resumed.safetensors", "--steps", 4, "--batch-size", 2, "--resume")
    assert resumed.training_summary["steps"] == 4
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_coco_captions_json(head_data, train_heads, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "img" / "a.jpg")
    data = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 8, "file_name": "missing.jpg"}],
            "annotations": [{"image_id": 7, "caption": " a red circle "}, {"image_id": 7, "caption": "a circle"},
                            {"image_id": 9, "caption": "no image"}]}
    (tmp_path / "captions.json").write_text(json.dumps(data))
    pairs = head_data.pairs_from_coco(tmp_path / "captions.json", tmp_path / "img")
    assert [(s.image, s.caption, s.masks) for s in pairs] == [
        (tmp_path / "img" / "a.jpg", "a red circle", {}), (tmp_path / "img" / "a.jpg", "a circle", {})]
    with pytest.raises(SystemExit):
        train_heads.main(["--demo-model", "tiny", "--coco-captions", "x.json", "--out", "h.safetensors"])
    assert "--coco-captions needs --images" in capsys.readouterr().err


def test_coco_instances_give_masks_for_named_categories(head_data, tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "img" / "a.jpg")
    captions = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 20}],
                "annotations": [{"image_id": 1, "caption": "A dog next to a cat."}]}
    instances = {"categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}, {"id": 3, "name": "car"}],
                 "annotations": [{"image_id": 1, "category_id": 18, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                                 {"image_id": 1, "category_id": 17, "segmentation": {"counts": "crowd-rle"}},
                                 {"image_id": 1, "category_id": 3, "segmentation": [[20, 0, 30, 0, 30, 10]]}]}
    (tmp_path / "c.json").write_text(json.dumps(captions))
    (tmp_path / "i.json").write_text(json.dumps(instances))
    [sample] = head_data.pairs_from_coco(tmp_path / "c.json", tmp_path / "img", tmp_path / "i.json")
    assert set(sample.masks) == {"dog"}          # cat is an RLE crowd, car is not in the caption
    mask = np.asarray(sample.masks["dog"]())
    assert mask.shape == (20, 40) and mask[5, 5] == 255 and mask[15, 30] == 0


def test_mask_supervision_pulls_gates_toward_masks(head_data, tiny, patching, pairs_dir):
    """With instance masks (beyond the paper), the BCE term on the phrase tokens' gate
    probabilities falls as the heads train."""
    from comfyui_maskattn.maskattn_ops.mask_supervision import mask_supervision_loss
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes.head_training import HeadTrainingStep
    model, clip, vae = tiny.build_all(seed=0)
    samples = head_data.pairs_from_folder(pairs_dir)[:4]
    assert all(s.masks for s in samples)
    latent, context, y, targets = head_data.Encoder(model, clip, vae, 128)(samples, torch.device("cpu"))
    assert [len(p) for t in targets for p, _ in t] == [2, 2, 2, 2]      # "<color> <kind>": two tokens
    noise, sigma = head_data.noise_and_sigma(model.model.model_sampling, latent, 0, 0, list(range(4)))
    torch.manual_seed(0)
    heads = HeadSet.for_sites(select_sites(patching.discover_sites(model), "mid-resolution"))
    step = HeadTrainingStep(model, heads, mask_weight=1.0)

    def supervision_term():
        with torch.no_grad():
            _, site_logits = step.diffusion_loss(latent, noise, sigma, context, y, capture=True)
        return mask_supervision_loss(site_logits, targets).item()

    before = supervision_term()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(10):
        optimizer.zero_grad()
        step(latent, noise, sigma, context, y, targets).backward()
        optimizer.step()
    assert supervision_term() < 0.95 * before


def test_inspect_heads_tells_inside_from_outside(host, pairs_dir, tmp_path):
    from maskattn_lab import inspect_heads
    mask = torch.zeros(16, 16)
    mask[:8] = 1                                            # top half
    logits = torch.full((1, 77, 4, 4), -5.0)
    logits[:, 2:4, :2] = 5.0                                # the phrase's tokens on only inside
    logits[:, 10:] = 5.0                                    # every other token on everywhere but 4..9
    inside, outside, other = inspect_heads.keep_rates([logits], [[([2, 3], mask)]], 0.5)
    assert (inside, outside) == (1.0, 0.0)
    assert other == pytest.approx((77 - 10) / (77 - 3))     # tokens 1 and 4..9 off; start and phrase excluded
    out = tmp_path / "inspect.md"
    assert inspect_heads.main(["--demo-model", "tiny", "--pairs", str(pairs_dir), "--count", "2",
                               "--levels", "0,999", "--out", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| fresh")]
    assert len(rows) == 2 and all([c.strip() for c in r[4:7]] == ["1.00", "1.00", "1.00"] for r in rows)
    assert all(float(r[3]) > 0 for r in rows)
