"""The lab's commands as a user runs them, each a subprocess of the venv's python:
the shapes model's trainer (runs, resumes, exports), the evaluation (rows, --rescore,
kind errors, quality), and the heads trainer under torchrun (2 processes = 1)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from maskattn_lab.comfy_server import free_port
from maskattn_lab.host import REPO


@pytest.fixture(scope="module")
def saved_random(host, tmp_path_factory):
    """A shapes model file with random weights: the same code path as the trained one."""
    from comfyui_maskattn.nodes import demo_models
    from maskattn_lab import shapes_model
    config = demo_models.ShapesModelConfig(train={"note": "test"})
    path = tmp_path_factory.mktemp("shapes") / "shapes_sdxl.safetensors"
    shapes_model.save(path, config, *demo_models.build_shapes_model(config, seed=3))
    return path


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
    from comfyui_maskattn.nodes.demo_models import read_config
    config = read_config(out)
    assert config.train["steps"] == 3 and config.train["train_seed_base"] == 10_000_000
    assert config.train["step_targets"] == [2, 3]          # each continuation restarts the cosine: both kept
    ceiling = config.train["vae_ceiling"]              # measured once, after the VAE stage
    assert set(ceiling) == {"precision", "binding"} and all(0.0 <= v <= 1.0 for v in ceiling.values())
    assert "vae round trip of held-out scenes" in done.stderr

    # the same schedule in one command gives the same weights; straight to 3 steps does not
    at_once, straight = tmp_path / "at_once.safetensors", tmp_path / "straight.safetensors"
    train(at_once, "--steps", "2,3")
    train(straight, "--steps", "3")
    assert read_config(at_once).train["step_targets"] == [2, 3]
    continued, one_run, other = live(out)["unet"], live(at_once)["unet"], live(straight)["unet"]
    assert all(torch.equal(continued[k], one_run[k]) for k in continued)
    assert not all(torch.equal(continued[k], other[k]) for k in continued)
    bad = train(out, "--steps", "3,2", check=False)
    assert bad.returncode != 0 and "must be positive and rising" in bad.stderr


def test_sd2_shapes_model_trains_on_a_given_vae_and_evaluates_beside(host, saved_random, tmp_path):
    """--family sd2: SD2.x's blocks and one text encoder (clip_h), the VAE taken from
    another shapes model (weights equal, latent normalised again for SD2's scale
    factor); its evaluation writes its own table (shapes_eval_sd2.md), never the SDXL one."""
    from comfyui_maskattn.nodes import demo_models
    from comfyui_maskattn.nodes.model_family import family_of
    out = tmp_path / "shapes_sd2.safetensors"
    subprocess.run([sys.executable, str(REPO / "scripts" / "train_shapes_model.py"), "--out", str(out),
                    "--family", "sd2", "--vae-from", str(saved_random), "--steps", "2", "--batch-size", "2",
                    "--pool", "64", "--ceiling-scenes", "4", "--norm-scenes", "8", "--warmup", "1"],
                   check=True, capture_output=True, text=True)
    config = demo_models.read_config(out)
    assert config.family == "sd2" and config.transformer_depth == (1, 1, 1, 1, 1, 1, 0, 0)
    model, clip, vae = demo_models.load_shapes_model(out)
    assert family_of(model) == "sd2" and list(clip.tokenize("a red circle")) == ["h"]
    _, _, given = demo_models.load_shapes_model(saved_random)
    ours, theirs = vae.first_stage_model.state_dict(), given.first_stage_model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k not in ("vae_scale", "vae_shift"))
    assert not torch.equal(ours["vae_scale"], theirs["vae_scale"])         # SD2's 0.18215, not SDXL's 0.13025
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_shapes.py"), "--model", str(out),
                           "--results", str(tmp_path / "eval"), "--images", str(tmp_path / "images"), "--sets", "1",
                           "--steps", "2", "--rows", "none;guidance a=0.08"], check=True, capture_output=True, text=True)
    assert "| guidance a=0.08 | 1 |" in done.stdout
    assert (tmp_path / "shapes_eval_sd2.md").is_file() and not (tmp_path / "shapes_eval.md").exists()


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
    report = (tmp_path / "shapes_eval.md").read_text()
    table, paired = report.split("Paired differences")
    assert table.count("\n| ") == 6                                      # header and 5 rows
    assert sorted(line.split(" | ")[:2] for line in paired.splitlines() if line.startswith("| ") and "minus" not in line) \
        == [["| guidance a=0.08", "none (2)"], ["| paint-with-words w'=0.3", "none (2)"], ["| swapping", "none (2)"]]
    assert (tmp_path / "shapes_eval_grid.png").is_file()

    path = results / "none.jsonl"
    scored = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "binding": -1.0, "miou": -1.0}) + "\n" for r in scored))
    subprocess.run([*command, "--rows", "none", "--rescore"], check=True, capture_output=True, text=True)
    assert [json.loads(line) for line in path.read_text().splitlines()] == scored
    (images / "none" / f"{scored[0]['seed']}.png").unlink()
    missing = subprocess.run([*command, "--rows", "none", "--rescore"], capture_output=True, text=True)
    assert missing.returncode != 0 and "none" in missing.stderr and "is missing" in missing.stderr

    from maskattn_lab import shapes
    kinds = subprocess.run([sys.executable, str(REPO / "scripts" / "kind_errors.py"), "--rows", "swapping",
                            "--results", str(results), "--images", str(images)], check=True, capture_output=True,
                           text=True)
    named = sum(len(scene.shapes) for _, scene in shapes.held_out(2, (2, 4)))
    row = next(line for line in kinds.stdout.splitlines() if line.startswith("| swapping |")).split(" | ")
    assert int(row[1]) == named and abs(sum(map(float, row[2:6])) - 1.0) < 0.01     # every named object, once
    assert "A wrong kind picked at random would be another object's in " in kinds.stdout

    # the odd layouts: per-category records and their own table; the peer row needs its pack's path
    odd = [sys.executable, str(REPO / "scripts" / "evaluate_shapes.py"), "--model", str(saved_random), "--layouts", "odd",
           "--results", str(tmp_path / "odd"), "--images", str(tmp_path / "odd_images"), "--sets", "2", "--steps", "2"]
    subprocess.run([*odd, "--rows", "none;paint-and-suppress w'=1.0 lambda 0.5"], check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (tmp_path / "odd" / "none.jsonl").read_text().splitlines()]
    assert [r["category"] for r in records] == ["ring", "band"] and "hole_filled" in records[0]
    assert all(0.0 <= r["odd_iou"] <= 1.0 for r in records)
    assert "| paint-and-suppress w'=1.0 lambda 0.5 | 2 |" in (tmp_path / "shapes_eval_odd.md").read_text()
    peer = subprocess.run([*odd, "--rows", "DenseDiffusion (peer)"], capture_output=True, text=True)
    assert peer.returncode != 0 and "--densediffusion PATH" in peer.stderr

    quality = subprocess.run([*command, "--quality", "2"], check=True, capture_output=True, text=True)
    assert "1-object prompts, named colour with the named kind:" in quality.stdout
    assert "(rendered scenes through the VAE: " in quality.stdout
    assert (tmp_path / "shapes_quality.md").read_text().startswith(f"model: {saved_random.name}, untrained\n")


def test_torchrun_two_processes_match_one(host, pairs_dir, tmp_path):
    from comfyui_maskattn.maskattn_ops.heads import load_heads
    common = ["--demo-model", "tiny", "--pairs", str(pairs_dir), "--resolution", "128", "--eval-pairs", "0",
              "--steps", "2"]
    one_path, two_path = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    single = subprocess.run([sys.executable, str(REPO / "scripts" / "train_heads.py"), *common, "--out", str(one_path),
                             "--batch-size", "2"], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    one = load_heads(one_path)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(REPO / "scripts" / "train_heads.py"), "--demo-model", "tiny", "--pairs", str(pairs_dir),
         "--out", str(two_path), "--resolution", "128", "--eval-pairs", "0", "--steps", "2", "--batch-size", "1"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    two = load_heads(two_path)
    assert two.training_summary["global_batch"] == one.training_summary["global_batch"] == 2
    # Batched vs per-process forward passes round differently. AdamW divides each
    # element's gradient by its own magnitude, so an element whose gradient is ~0 can move
    # by up to lr per step either way on rounding alone: all but a handful of elements
    # must agree to 5e-5, and none may differ by more than two full steps (2 x 2 x lr).
    moved, total, off = 0.0, 0, 0
    fresh = _fresh_heads_like(one)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        diff = (a - b).abs()
        assert diff.max() <= 4e-3, name
        off += int((diff > 5e-5 + 1e-4 * a.abs()).sum())
        total += a.numel()
        moved = max(moved, float((a - fresh[name]).abs().max()))
    assert off <= total * 1e-3, (off, total)
    assert moved > 1e-3     # training moved the heads far more than the tolerance


def _fresh_heads_like(heads):
    """The heads the trainer starts from (it seeds torch with --seed 0 first)."""
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    torch.manual_seed(0)
    return HeadSet(heads.site_shapes(), context_dim=heads.context_dim, embed_dim=heads.embed_dim).state_dict()


def test_every_command_line_parses_and_shows_its_defaults():
    """Each thin CLI imports its lab module and answers --help, every option's default shown."""
    commands = {"scripts": ["train_heads", "inspect_heads", "evaluate_shapes", "kind_errors", "train_shapes_model",
                            "run_workflows", "make_shapes_pairs", "print_sites"], "benchmarks": ["bench_sdxl"]}
    runs = {name: subprocess.Popen([sys.executable, str(REPO / folder / f"{name}.py"), "--help"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for folder, names in commands.items() for name in names}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, (name, err[-2000:])
        assert "usage:" in out and "(default:" in out, (name, out)
