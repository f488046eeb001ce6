"""Load MaskAttn Training Set and Train MaskAttn Heads in the real executor on the tiny
SDXL: the heads equal what scripts/train_heads.py makes from the same data, settings and
seed; the host's progress bar and Plot Loss Graph; cancel, then resume to the heads of an
uninterrupted run; bad data and settings refused naming the problem."""
import json
import shutil

import pytest
import torch
from PIL import Image
from torch.testing import assert_close

SETTINGS = {"steps": 4, "batch_size": 2, "learning_rate": 0.01, "resolution": 128, "seed": 3, "mode": "hard",
            "sites": "mid-resolution", "mask_weight": 1.0, "gradient_checkpointing": True, "resume": False}


@pytest.fixture
def places(host_nodes, tmp_path, pairs_dir):
    """A temporary input/ with the pairs as input/pairs, and a temporary models/maskattn
    first in the heads folder list (where the node writes); both put back after."""
    import folder_paths
    input_dir, heads_dir = tmp_path / "input", tmp_path / "maskattn"
    shutil.copytree(pairs_dir, input_dir / "pairs")
    heads_dir.mkdir()
    old_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(input_dir))
    folder_paths.folder_names_and_paths["maskattn"][0].insert(0, str(heads_dir))
    yield input_dir, heads_dir
    folder_paths.folder_names_and_paths["maskattn"][0].remove(str(heads_dir))
    folder_paths.set_input_directory(old_input)


def training_graph(folder="pairs", name="trained", **settings):
    train = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "training_set": ["2", 0], "heads_name": name,
             **SETTINGS, **settings}
    return {
        "1": {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": "tiny-sdxl-random", "seed": 0}},
        "2": {"class_type": "MaskAttnLoadTrainingSet", "inputs": {"folder": folder}},
        "3": {"class_type": "MaskAttnTrainHeads", "inputs": train},
        "4": {"class_type": "LossGraphNode", "inputs": {"loss": ["3", 1], "filename_prefix": "maskattn_loss"}},
    }


def with_sampling(prompt):
    """Samples with the trained heads straight from the training node's HEADS."""
    return {**prompt,
            "5": {"class_type": "MaskAttnApplyMaskedCrossAttention", "inputs": {
                "model": ["1", 0], "heads": ["3", 0], "threshold": 0.5, "mode": "hard",
                "start_percent": 0.0, "end_percent": 1.0, "apply_to_uncond": True}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
            "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "8": {"class_type": "KSampler", "inputs": {
                "model": ["5", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["7", 0],
                "seed": 0, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
            "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}}


def heads_tensors(path):
    from comfyui_maskattn.maskattn_ops.heads import load_heads
    return load_heads(path).state_dict()


def test_node_trains_what_the_command_trains(places, run_graph, tmp_path, patching):
    """On the shapes model with the shipped pairs: the node's file equals the CLI's from the
    same pairs, settings and seed, tensor for tensor; its HEADS sample right away and its
    loss plots with the host's node."""
    from comfyui_maskattn.maskattn_ops.heads import HeadSet, load_heads
    from comfyui_maskattn.nodes import demo_models
    from comfyui_maskattn.nodes.nodes_training import SHIPPED_SETS
    from maskattn_lab import train_heads
    _, heads_dir = places
    prompt = with_sampling(training_graph(folder="[demo] shapes"))
    prompt["1"]["inputs"]["model"] = "shapes-sdxl"
    prompt["7"]["inputs"].update(width=128, height=128)
    outputs = run_graph(prompt)
    assert len(outputs["4"]["images"]) == 1 and len(outputs["10"]["images"]) == 1
    cli_out = tmp_path / "cli.safetensors"
    assert train_heads.main(["--demo-model", "shapes", "--pairs", str(SHIPPED_SETS["[demo] shapes"]),
                             "--out", str(cli_out), "--steps", "4", "--batch-size", "2", "--lr", "0.01",
                             "--resolution", "128", "--seed", "3", "--mask-weight", "1.0", "--recompute",
                             "--cache-latents", "--eval-pairs", "0"]) == 0
    node_heads, cli_heads = heads_tensors(heads_dir / "trained.safetensors"), heads_tensors(cli_out)
    assert node_heads.keys() == cli_heads.keys()
    for key in node_heads:
        assert torch.equal(node_heads[key], cli_heads[key]), key
    # and the steps moved them: not the seed's initial heads
    trained = load_heads(heads_dir / "trained.safetensors")
    assert trained.training_summary["steps"] == 4 and trained.training_summary["mask_supervision"] == 1.0
    model, _, _ = demo_models.load_shapes_model(demo_models.SHIPPED)
    torch.manual_seed(3)
    initial = HeadSet.for_sites([s for s in patching.discover_sites(model) if s.name in trained.site_names]).state_dict()
    assert any(not torch.equal(initial[key], node_heads[key]) for key in node_heads)


@pytest.mark.parametrize("demo_model, family", [("tiny-sd1-random", "sd1"), ("tiny-sd2-random", "sd2"),
                                                ("tiny-sd2-v-random", "sd2")])
def test_heads_for_sd1_and_sd2_models(places, run_graph, demo_model, family):
    """SD1.x and SD2.x (no pooled-text input, one text encoder): the node trains heads for
    the family's mid-resolution sites, records the family, and they sample at once."""
    from comfyui_maskattn.maskattn_ops.heads import load_heads
    _, heads_dir = places
    prompt = with_sampling(training_graph(steps=2))
    prompt["1"]["inputs"]["model"] = demo_model
    outputs = run_graph(prompt)
    assert len(outputs["4"]["images"]) == 1 and len(outputs["10"]["images"]) == 1
    trained = load_heads(heads_dir / "trained.safetensors")
    assert trained.base_family == family and trained.training_summary["steps"] == 2
    assert trained.site_names == ["input.4.0", "input.5.0", "output.6.0", "output.7.0", "output.8.0"]


def test_progress_cancel_and_resume(places, run_graph, graph_queue):
    """The host's progress bar counts the steps; cancelling at step 3 of 6 leaves a resume
    file, and queueing again continues to the heads of an uninterrupted 6-step run."""
    import comfy.model_management
    import comfy.utils
    _, heads_dir = places
    seen = []

    def hook(value, total, preview=None, node_id=None):
        seen.append((value, total))
        if value == 3 and total == 6:
            comfy.model_management.interrupt_current_processing(True)

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(RuntimeError, match="execution failed|interrupted"):
            run_graph(training_graph(name="cancelled", steps=6, resume=True))
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        comfy.model_management.interrupt_current_processing(False)
    assert (3, 6) in seen and (6, 6) not in seen
    state = torch.load(heads_dir / "cancelled.safetensors.resume.pt", weights_only=True)
    assert state["step"] == 3 and not (heads_dir / "cancelled.safetensors").exists()
    outputs = run_graph(training_graph(name="cancelled", steps=6, resume=True))
    assert len(outputs["4"]["images"]) == 1
    run_graph(training_graph(name="straight", steps=6, resume=False))
    resumed, straight = heads_tensors(heads_dir / "cancelled.safetensors"), heads_tensors(heads_dir / "straight.safetensors")
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_resume_with_other_settings_is_refused(places, run_graph):
    run_graph(training_graph(name="base", steps=2, resume=True))
    with pytest.raises(RuntimeError, match=r"trained with other settings \(lr: 0.01 there, 0.02 now\)"):
        run_graph(training_graph(name="base", steps=3, resume=True, learning_rate=0.02))
    run_graph(training_graph(name="base", steps=3, resume=False, learning_rate=0.02))   # anew: fine


def test_recomputed_activations_give_the_same_heads(places, run_graph):
    """Gradient checkpointing changes memory, not the numbers (to float rounding)."""
    _, heads_dir = places
    run_graph(training_graph(name="kept", gradient_checkpointing=False))
    run_graph(training_graph(name="recomputed", gradient_checkpointing=True))
    kept, recomputed = heads_tensors(heads_dir / "kept.safetensors"), heads_tensors(heads_dir / "recomputed.safetensors")
    for key in kept:
        assert_close(recomputed[key], kept[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    ("no captions", r"Load MaskAttn Training Set \(folder\): .*no image with a same-named .txt caption"),
    ("phrase not in caption", r"masks.json: phrase 'green triangle' is not in the caption"),
    ("missing mask file", r"mask file 'gone.png' of 'red square' does not exist"),
    ("masks not json", r"masks.json: not a JSON object"),
    ("corrupt image", r"0.png: not a readable image"),
])
def test_bad_training_data_is_named(places, run_graph, damage, message):
    input_dir, _ = places
    folder = input_dir / "pairs"
    if damage == "no captions":
        for caption in folder.glob("*.txt"):
            caption.unlink()
    elif damage == "phrase not in caption":
        (folder / "0.masks.json").write_text(json.dumps({"green triangle": "0.mask.png"}))
    elif damage == "missing mask file":
        (folder / "0.txt").write_text("a red square")
        (folder / "0.masks.json").write_text(json.dumps({"red square": "gone.png"}))
    elif damage == "masks not json":
        (folder / "0.masks.json").write_text("{not json")
    elif damage == "corrupt image":
        (folder / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(RuntimeError, match=message):
        run_graph(training_graph())


def test_bad_settings_are_refused_before_training(places, run_graph):
    with pytest.raises(AssertionError, match=r"heads_name.*not a plain file name"):
        run_graph(training_graph(name="../outside"))
    with pytest.raises(RuntimeError, match=r"8 pairs are fewer than one batch \(1 x 9\)"):
        run_graph(training_graph(batch_size=9))


def test_the_shipped_demo_set_loads(host_nodes):
    from comfyui_maskattn.nodes.nodes_training import MaskAttnLoadTrainingSet
    training_set = MaskAttnLoadTrainingSet.execute("[demo] shapes").result[0]
    assert len(training_set.samples) == 64 and training_set.has_masks
    first = training_set.samples[0]
    assert all(phrase in first.caption for phrase in first.masks)
    assert Image.open(first.image).size == (128, 128)
