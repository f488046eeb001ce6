"""Our patches under both ways hosts copy model_options on ModelPatcher.clone(): a deep
copy (0.3.64, the pinned host) and a copy of dicts and lists only, every other object
shared between the clones (newer hosts, comfy.utils.deepcopy_list_dict). Installed
objects are never changed in place, so every chain of nodes gives the same result under
both, and a model a node received samples as before once the node has derived another
model from it."""
import types

import pytest
import torch

from helpers import scripted_heads


def copy_dicts_and_lists(obj, memo=None):
    """Dicts and lists copied, recursively; every other object shared (not copied)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = {copy_dicts_and_lists(k, memo): copy_dicts_and_lists(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [copy_dicts_and_lists(v, memo) for v in obj]
    else:
        out = obj
    memo[id(obj)] = out
    return out


@pytest.fixture(params=["deep copy", "dicts and lists only"])
def clone_semantics(request, host, monkeypatch):
    """The host's clone() as the pinned host does it, or as newer hosts do."""
    import copy

    import comfy.model_patcher
    if request.param == "dicts and lists only":
        monkeypatch.setattr(comfy.model_patcher, "copy", types.SimpleNamespace(
            deepcopy=copy_dicts_and_lists, copy=copy.copy))
    return request.param


@pytest.fixture(scope="module")
def parts(host, nodes_regions, tiny_models):
    """Heads, regions and conditioning the chains use (built once, shared by both semantics)."""
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import patching
    model, clip, _ = tiny_models
    with torch.inference_mode():
        positive, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, "a red circle and a blue square").args
        heads = HeadSet.for_sites(select_sites(patching.discover_sites(model), "mid-resolution"))
    scripted_heads(heads, {2: "right"})                    # "red" in the left half only
    mask = torch.zeros(1, 128, 128)
    mask[..., 64:] = 1.0
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "blue square", 1.0, 0, 0, 0, 0, 128, 128,
                                                       mask=mask).args[0]
    return heads, regions, positive, prompt


def chains(nodes_regions, heads, regions):
    """name -> the nodes applied one after another to a model."""
    from comfyui_maskattn.nodes import nodes_gating

    def gate(model, self_gating=False):
        return nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(
            model, heads, 0.5, "hard", 0.0, 1.0, True, self_attention_gating=self_gating).args[0]

    def region(model, mode):
        return nodes_regions.MaskAttnRegionGuidance.execute(model, regions, mode, 0.08, 0.5, 0.3, 0.0, 0.5,
                                                            "all").args[0]
    return {
        "gating + self-attention gating": lambda m: gate(m, True),
        "guidance": lambda m: region(m, "guidance"),
        "swapping over gating": lambda m: region(gate(m), "swapping"),
        "guidance over paint-with-words": lambda m: region(region(m, "paint-with-words"), "guidance"),
        "guidance over swapping": lambda m: region(region(m, "swapping"), "guidance"),
    }


@pytest.fixture(scope="module")
def deep_copy_results(host, nodes_regions, parts, tiny_models, sample):
    """What each chain samples under the pinned host's deep copy (the reference)."""
    heads, regions, _, _ = parts
    return {name: sample(chain(tiny_models[0]), steps=2) for name, chain in chains(nodes_regions, heads, regions).items()}


def test_every_chain_samples_the_same_under_both(clone_semantics, nodes_regions, parts, tiny_models, sample,
                                                 deep_copy_results):
    heads, regions, _, _ = parts
    for name, chain in chains(nodes_regions, heads, regions).items():
        assert torch.equal(sample(chain(tiny_models[0]), steps=2), deep_copy_results[name]), name


def test_a_model_samples_as_before_after_a_node_derived_another(clone_semantics, nodes_regions, patching, parts,
                                                                tiny_models, sample):
    heads, regions, positive, prompt = parts
    steps = chains(nodes_regions, heads, regions)
    gated = steps["gating + self-attention gating"](tiny_models[0])
    before = sample(gated, steps=2)
    providers = {layer: patching.providers(gated, object, layer) for layer in ("attn1", "attn2")}
    steps["guidance"](gated)
    steps["swapping over gating"](gated)
    from comfyui_maskattn.nodes.visualize import capture_maps
    with torch.inference_mode():
        capture_maps(gated, positive, positive, {"samples": torch.zeros(1, 4, 16, 16)}, 5.0, 0.5, 0)
    assert {layer: patching.providers(gated, object, layer) for layer in ("attn1", "attn2")} == providers
    assert torch.equal(sample(gated, steps=2), before)
