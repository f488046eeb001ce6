"""Every weight precision through the host's own manual cast (fp32, fp16, bf16, fp8
e4m3fn and e5m2), every mode finite; gate heads keep their fp32 master weights whatever
the host asks, and a HEADS object shared by models of different dtypes gives each what
it gives alone, before and after the other ran."""
import pytest
import torch

from helpers import scripted_heads

WEIGHT_DTYPES = [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.fixture(scope="module")
def modes(host, nodes_regions, tiny_models):
    """name -> a function that patches a model in that mode, with the nodes' own execute()."""
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import nodes_gating, patching
    _, clip, _ = tiny_models
    with torch.inference_mode():
        _, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, "a red circle and a blue square").args
        heads = HeadSet.for_sites(select_sites(patching.discover_sites(tiny_models[0]), "mid-resolution"))
    mask = torch.zeros(1, 128, 128)
    mask[..., :64] = 1.0
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red circle", 1.0, 0, 0, 0, 0, 128, 128,
                                                       mask=mask).args[0]

    def region(mode):
        return lambda model: nodes_regions.MaskAttnRegionGuidance.execute(
            model, regions, mode, 0.08, 0.5, 0.3, 0.0, 0.5, "all").args[0]
    return {
        "gating": lambda model: nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(
            model, heads, 0.5, "hard", 0.0, 1.0, True, self_attention_gating=True).args[0],
        "guidance": region("guidance"), "swapping": region("swapping"), "paint-with-words": region("paint-with-words"),
        "paint-and-suppress": region("paint-and-suppress"),
    }


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=str)
def test_every_mode_is_finite_at_every_weight_precision(tiny, modes, sample, weight_dtype):
    with torch.inference_mode():
        model = tiny.build_model(seed=0, weight_dtype=weight_dtype)
    assert next(model.model.diffusion_model.parameters()).dtype == weight_dtype
    plain = sample(model, steps=3)
    assert torch.isfinite(plain).all()
    for name, patch in modes.items():
        out = sample(patch(model), steps=3)
        assert torch.isfinite(out).all(), name
        if name != "gating":              # fresh heads keep every token: gating is the model itself
            assert (out - plain).abs().max() > 1e-4, name


def forced_heads(sites):
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    with torch.inference_mode():
        heads = HeadSet.for_sites(sites)
    return scripted_heads(heads, {2: "all"})             # "red" off everywhere


def test_shared_heads_give_each_model_what_it_gives_alone(tiny, patching, tiny_models, sample):
    """bf16-computing and fp32 models share one HEADS; the host converts patches to each
    model's dtype when it loads it. The fp32 model's run is bit-equal before and after
    the bf16 model ran, and the master weights stay fp32."""
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import nodes_gating
    with torch.inference_mode():
        fp32 = tiny_models[0]
        bf16 = tiny.build_model(seed=0, weight_dtype=torch.bfloat16, manual_cast=False)
        heads = HeadSet.for_sites(select_sites(patching.discover_sites(fp32), "mid-resolution"))
        torch.manual_seed(1)
        for p in heads.parameters():           # trained-looking heads: every weight non-zero
            p.copy_(torch.randn_like(p) * 0.5)

    def gated(model):
        return nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(model, heads, 0.5, "soft", 0.0, 1.0,
                                                                      True).args[0]

    alone = sample(gated(fp32), steps=2)
    with_bf16 = sample(gated(bf16), steps=2)
    assert torch.isfinite(with_bf16).all()
    assert {p.dtype for p in heads.parameters()} == {torch.float32}
    assert torch.equal(sample(gated(fp32), steps=2), alone)
    gated(fp32).model_patches_to(torch.float16)             # what the host does for an fp16 model
    assert {p.dtype for p in heads.parameters()} == {torch.float32}
    assert torch.equal(sample(gated(fp32), steps=2), alone)


def test_a_bf16_model_computes_its_gates_in_bf16(tiny, patching, sample):
    """The cast copy is in the call's compute dtype: a head whose output depends on it
    sees bf16 queries on a bf16 model, and the gate still acts."""
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import nodes_gating
    with torch.inference_mode():
        bf16 = tiny.build_model(seed=0, weight_dtype=torch.bfloat16, manual_cast=False)
    heads = forced_heads(select_sites(patching.discover_sites(bf16), "mid-resolution"))
    seen = set()
    for name in heads.site_names:
        head = heads.head(name)
        head.forward = (lambda forward: lambda q, k, grid: seen.add(q.dtype) or forward(q, k, grid))(head.forward)
    gated = nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(bf16, heads, 0.5, "hard", 0.0, 1.0, True).args[0]
    out = sample(gated, steps=2)
    assert torch.isfinite(out).all() and (out - sample(bf16, steps=2)).abs().max() > 1e-3
    assert {p.dtype for p in heads.parameters()} == {torch.float32}
