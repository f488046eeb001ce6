"""maskattn_lab.modulation: DenseDiffusion's attention modulation against the authors'
update written out (gradio_app.py, mod_forward: binary layouts, cond rows only)."""
import pytest
import torch
from torch.testing import assert_close

from maskattn_lab.modulation import AttentionModulation, modulated, self_target
from comfyui_maskattn.maskattn_ops.region_attention import RegionAttention, SiteRegion
from comfyui_maskattn.maskattn_ops.regions import Region
from comfyui_maskattn.maskattn_ops.sites import Site, SiteCall

GRID = (4, 4)
N = 16


def layouts():
    """Two binary regions and the background, (3, N): the authors' ``layouts``."""
    first = torch.zeros(4, 4)
    first[:2, :2] = 1
    second = torch.zeros(4, 4)
    second[2:, 1:] = 1
    return torch.stack([first.flatten(), second.flatten(), (1 - first - second).flatten()])


def authors_update(sim, layout, token_maps, t, creg, sreg, sizereg, self_attention):
    """mod_forward's update on the cond rows of ``sim`` (B, N, T) for one head, written
    out the authors' way: sreg_maps from the layouts' outer products, reg_sizes from their
    row sums, pww maps per token (0 for tokens in no segment)."""
    treg = (t / 1000) ** 5
    sreg_map = (layout[:, None, :] * layout[:, :, None]).sum(0)                 # (N, N)
    reg_size = 1 - sizereg * sreg_map.sum(-1, keepdim=True) / N                # (N, 1)
    mask = sreg_map if self_attention else token_maps                          # (N, T)
    weight = sreg if self_attention else creg
    out = sim.clone()
    for b in range(sim.shape[0]):
        low = sim[b].min(-1)[0].unsqueeze(-1)
        high = sim[b].max(-1)[0].unsqueeze(-1)
        out[b] = out[b] + (mask > 0) * reg_size * weight * treg * (high - sim[b])
        out[b] = out[b] - ~(mask > 0) * reg_size * weight * treg * (sim[b] - low)
    return out


class Sampling:
    """sigma -> timestep of a made-up schedule (t = 100 * sigma)."""

    @staticmethod
    def timestep(sigma):
        return sigma * 100


def call_for(q, k, sigmas, cond_or_uncond=(1, 0)):
    site = Site(key=("input", 1, 0), downsample=1, channels=q.shape[-1], heads=2, dim_head=q.shape[-1] // 2,
                context_dim=k.shape[-1])
    return SiteCall(site=site, grid=GRID, batch=q.shape[0], tokens=k.shape[1], cond_or_uncond=cond_or_uncond,
                    sigmas=sigmas, q=q, k=k)


def modulation(layer, weight, words=((1, 2), (5,))):
    lay = layouts()
    regions = tuple(Region(lay[i].view(1, 4, 4), positions, 77, f"w{i}") for i, positions in enumerate(words))
    return AttentionModulation(RegionAttention(regions, mode="swapping"), Sampling.timestep, layer, weight)


@pytest.mark.parametrize("layer", ["attn2", "attn1"])
def test_edit_is_the_authors_update_on_cond_rows_only(layer):
    g = torch.Generator().manual_seed(0)
    tokens = 77 if layer == "attn2" else N
    logits = torch.randn(4, 2, N, tokens, generator=g) * 3               # batch: uncond (2), cond (2)
    sigmas = torch.tensor([9.0, 6.0])                                      # t = 900 and 600
    call = call_for(torch.zeros(4, N, 8), torch.zeros(4, tokens, 8), sigmas)
    weight = 1.0 if layer == "attn2" else 0.3
    edited = modulation(layer, weight).logits_edit(call)(logits.clone())
    token_maps = torch.zeros(N, 77)
    lay = layouts()
    token_maps[:, 1] = token_maps[:, 2] = lay[0]
    token_maps[:, 5] = lay[1]
    assert torch.equal(edited[:2], logits[:2])                             # uncond rows untouched
    for row, t in zip((2, 3), (900.0, 600.0)):
        for head in range(2):
            expected = authors_update(logits[row:row + 1, head], lay, token_maps, t, 1.0, 0.3, 1.0, layer == "attn1")
            assert_close(edited[row:row + 1, head], expected, atol=1e-5, rtol=1e-5)


def test_pairs_in_a_segment_rise_and_others_fall():
    lay = layouts()
    target = self_target([SiteRegion(lay[0][None], ()), SiteRegion(lay[1][None], ())])[0]
    assert torch.equal(target, (lay[:, None, :] * lay[:, :, None]).sum(0))      # background is a segment
    logits = torch.zeros(1, 1, N, N)
    logits[..., 0] = 1.0                       # row max at key 0, min elsewhere
    before = logits.clone()
    logits = modulated(logits, target[None], torch.ones(1, N, 1), torch.tensor([0.5]))
    same = target.bool()
    assert (logits[0, 0][same] >= before[0, 0][same]).all() and (logits[0, 0][~same] <= before[0, 0][~same]).all()


def test_strength_decays_as_the_fifth_power_and_zero_weight_is_no_edit():
    call = call_for(torch.zeros(2, N, 8), torch.zeros(2, 77, 8), torch.tensor([5.0]), cond_or_uncond=(0, 1))
    assert_close(modulation("attn2", 2.0).strength(call), torch.tensor([2.0 * 0.5 ** 5]))
    assert modulation("attn2", 0.0).logits_edit(call) is None


def test_outside_the_window_no_edit():
    mod = modulation("attn2", 1.0)
    mod.regions.sigma_start, mod.regions.sigma_end = 4.0, 1.0
    call = call_for(torch.zeros(2, N, 8), torch.zeros(2, 77, 8), torch.tensor([5.0]), cond_or_uncond=(0, 1))
    assert mod.logits_edit(call) is None
