"""Cross-attention sites: the real SDXL list, SD1.x's and SD2.x's counted from the host's
config, the mid-resolution selection, and what the host reports at each site during a
real sampling run."""
import pytest

from comfyui_maskattn.maskattn_ops.sites import Site, parse_selection, select_sites, token_grid

MID_KEYS = {(b, i, d) for b, ids in (("input", (4, 5)), ("output", (3, 4, 5))) for i in ids for d in (0, 1)}


@pytest.fixture(scope="session")
def sdxl_sites(host):
    from maskattn_lab.unet_sites import full_size_sites
    return full_size_sites("sdxl")


def sites_from_config(config: dict) -> list[tuple[tuple[str, int, int], int]]:
    """(key, downsample) of every cross-attention site, counted from a UNet config alone
    (openaimodel.UNetModel's layout: a conv stem, then per level its res blocks, each
    with transformer_depth[i] transformer blocks, and a downsampler between levels; the
    middle block; the output levels in reverse, one block more each)."""
    res_blocks, levels = config["num_res_blocks"], len(config["channel_mult"])
    # input blocks take transformer_depth from the front, output blocks from the back
    depths, out_depths = iter(config["transformer_depth"]), reversed(config["transformer_depth_output"])
    sites, block_id = [], 0
    for level in range(levels):
        for _ in range(res_blocks[level]):
            block_id += 1
            sites += [(("input", block_id, d), 2 ** level) for d in range(next(depths))]
        block_id += 1                                           # the downsampler (none after the last)
    sites += [(("middle", 0, d), 2 ** (levels - 1)) for d in range(config["transformer_depth_middle"])]
    block_id = 0
    for level in reversed(range(levels)):
        for _ in range(res_blocks[level] + 1):
            sites += [(("output", block_id, d), 2 ** level) for d in range(next(out_depths))]
            block_id += 1
    return sites


@pytest.mark.parametrize("family, sites, mid", [("sdxl", 70, 10), ("sd1", 16, 5), ("sd2", 16, 5)])
def test_every_familys_sites_are_its_configs(patching, tiny, family, sites, mid):
    """The sites read from the module tree of the full-size UNet (built on meta from the
    config the host detects for that family's checkpoints) are exactly those the config
    describes, the tiny model's the same keys; mid-resolution is the latent/2 level
    (SDXL: 64x64 at 1024 px; SD1.x: 32x32 at 512 px, the middle of its three attended
    levels; SD2.x: 48x48 at 768 px)."""
    from maskattn_lab.unet_sites import full_size_sites
    found = full_size_sites(family)
    expected = sites_from_config(tiny.DETECTED_UNET_CONFIGS[family])
    assert [(s.key, s.downsample) for s in found] == expected and len(found) == sites
    assert {s.context_dim for s in found} == {tiny.DETECTED_UNET_CONFIGS[family]["context_dim"]}
    chosen = select_sites(found, "mid-resolution")
    assert [s.key for s in chosen] == [key for key, downsample in expected if downsample == 2] and len(chosen) == mid
    import torch
    with torch.inference_mode():
        tiny_model = tiny.build_model(family=family)
    assert [(s.key, s.downsample) for s in patching.discover_sites(tiny_model)] == expected


def test_real_sdxl_site_list_matches_design_table(sdxl_sites):
    assert len(sdxl_sites) == 70
    by_level = {}
    for s in sdxl_sites:
        by_level.setdefault(s.downsample, []).append(s)
    assert sorted(by_level) == [2, 4]            # nothing at 128x128, 10 at 64x64, 60 at 32x32
    assert {s.key for s in by_level[2]} == MID_KEYS
    assert all((s.heads, s.dim_head, s.channels) == (10, 64, 640) for s in by_level[2])
    assert len(by_level[4]) == 60
    assert all((s.heads, s.dim_head, s.channels) == (20, 64, 1280) for s in by_level[4])
    assert {s.key[:2] for s in by_level[4]} == {("input", 7), ("input", 8), ("middle", 0),
                                                ("output", 0), ("output", 1), ("output", 2)}
    assert all(s.context_dim == 2048 for s in sdxl_sites)


def test_mid_resolution_selection_on_real_sdxl(sdxl_sites):
    mid = select_sites(sdxl_sites, "mid-resolution")
    assert {s.key for s in mid} == MID_KEYS
    assert select_sites(sdxl_sites, "all") == sdxl_sites
    encoder = select_sites(sdxl_sites, "encoder")
    assert [s.key[:2] for s in encoder] == [("input", 4)] * 2 + [("input", 5)] * 2 + [("input", 7)] * 10 + [("input", 8)] * 10
    assert [s.name for s in select_sites(sdxl_sites, ["output.3.1", "middle.0.9"])] == ["output.3.1", "middle.0.9"]
    with pytest.raises(ValueError, match=r"unknown cross-attention site\(s\) \['input.1.0'\]"):
        select_sites(sdxl_sites, ["input.1.0"])


def test_site_table_script_prints_the_levels(sdxl_sites):
    from maskattn_lab.unet_sites import site_table
    table = site_table(sdxl_sites)
    assert "70 cross-attention sites; mid-resolution: 10" in table
    assert sum("yes" in line for line in table.splitlines()) == 5   # 5 blocks x 2 depths


def test_tiny_model_has_sdxl_site_keys(patching, tiny_models, sdxl_sites):
    tiny_sites = patching.discover_sites(tiny_models[0])
    assert [(s.key, s.downsample) for s in tiny_sites] == [(s.key, s.downsample) for s in sdxl_sites]


def test_token_grid_checks_query_count():
    assert token_grid([2, 640, 24, 16], 384) == (24, 16)
    with pytest.raises(ValueError, match="does not match"):
        token_grid([2, 640, 24, 16], 380)


def test_no_mid_resolution_sites_is_a_clear_error():
    coarse = [Site(("input", 7, 0), 4, 1280, 20, 64, 2048)]
    with pytest.raises(ValueError, match="no cross-attention at the mid-resolution level"):
        select_sites(coarse, "mid-resolution")


def test_typed_selections_parse_as_select_sites_takes_them(sdxl_sites):
    """Region Mask Guidance's site_list and Train MaskAttn Heads' sites, as typed."""
    assert parse_selection(" mid-resolution ") == "mid-resolution"
    assert parse_selection("output.3.1") == "output.3.1"
    assert parse_selection("input.4.0, output.3.1,") == ["input.4.0", "output.3.1"]
    assert [s.name for s in select_sites(sdxl_sites, parse_selection("input.4.0, output.3.1"))] == ["input.4.0",
                                                                                                   "output.3.1"]


def test_a_dit_model_is_refused_naming_it(patching, nodes_regions, tiny_models):
    """Flux (the host's own model class, tiny): no UNet sites; the nodes say so and
    point at the design note, rather than failing inside the host."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch
    config = comfy.supported_models.Flux({
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
        "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
        "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True})
    with torch.inference_mode():
        flux = comfy.model_patcher.ModelPatcher(config.get_model({}, device=torch.device("cpu")),
                                                load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with pytest.raises(TypeError, match=r"MaskAttn supports UNet models \(SDXL, SD1.x, SD2.x families\); this "
                                        r"model's diffusion model is Flux .*docs/dit.md"):
        patching.discover_sites(flux)
    _, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(tiny_models[1], "a red circle").args
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red", 1.0, 0, 0, 64, 64, 128, 128).args[0]
    with pytest.raises(TypeError, match="this model's diffusion model is Flux"):
        nodes_regions.MaskAttnRegionGuidance.execute(flux, regions, "swapping", 0.08, 0.5, 0.3, 0.0, 0.3, "all")
