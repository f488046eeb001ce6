"""Cross-attention sites: the real SDXL list, the mid-resolution selection, and what
the host reports at each site during a real sampling run."""
import pytest

from comfyui_maskattn.maskattn_ops.sites import Site, select_sites, token_grid

MID_KEYS = {(b, i, d) for b, ids in (("input", (4, 5)), ("output", (3, 4, 5))) for i in ids for d in (0, 1)}


@pytest.fixture(scope="session")
def sdxl_sites(host):
    from maskattn_lab.sdxl_sites import sdxl_sites
    return sdxl_sites()


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
    from maskattn_lab.sdxl_sites import site_table
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
