"""maskattn_ops.guidance: Endo's loss and swapping, paint-with-words, mask resizing."""
import math

import pytest
import torch
from torch.testing import assert_close

from comfyui_maskattn.maskattn_ops.guidance import masked_attention_loss
from comfyui_maskattn.maskattn_ops.region_attention import SiteRegion, paint_with_words_, swap_attention_
from comfyui_maskattn.maskattn_ops.regions import mask_to_grid
from comfyui_maskattn.maskattn_ops.sites import SiteCall


def probs_like(b=2, heads=3, n=16, t=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, heads, n, t, generator=g).softmax(-1)


@pytest.mark.parametrize("size", [(64, 64), (37, 91), (4, 4)])
def test_mask_to_grid_all_zero_all_one_and_half(size):
    h, w = size
    zero, one = torch.zeros(1, h, w), torch.ones(1, h, w)
    half = torch.zeros(1, h, w)
    half[:, :, : w // 2] = 1
    for grid in [(4, 4), (8, 12), (3, 5)]:
        assert (mask_to_grid(zero, grid) == 0).all()
        assert (mask_to_grid(one, grid) == 1).all()
        cells = mask_to_grid(half, grid).view(grid)
        assert_close(cells.mean(), torch.tensor((w // 2) / w), atol=0.08, rtol=0)


def test_mask_to_grid_exact_for_aligned_halves():
    half = torch.zeros(2, 64, 96)
    half[:, :, :48] = 1
    assert torch.equal(mask_to_grid(half, (4, 6)).view(2, 4, 6)[0], torch.tensor([[1., 1, 1, 0, 0, 0]] * 4))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        mask_to_grid(torch.ones(64, 64), (4, 4))


def test_loss_is_equation_2_written_out():
    probs = probs_like()
    mask = (torch.arange(16) % 3 == 0).float()[None]
    regions = [SiteRegion(mask, (2, 3)), SiteRegion(1 - mask, (5,))]
    lam = 0.5
    expected = torch.zeros(2)
    for b in range(2):
        for region in regions:
            for w in region.positions:
                for p in range(16):
                    m = probs[b, :, p, w].sum()
                    expected[b] += -m if region.mask[0, p] == 1 else lam * m
    assert_close(masked_attention_loss(probs, regions, lam), expected)


def test_loss_gradient_pulls_inside_up_and_outside_down():
    probs = probs_like().requires_grad_()
    mask = torch.zeros(1, 16)
    mask[:, :8] = 1
    masked_attention_loss(probs, [SiteRegion(mask, (4,))], lam=0.5).sum().backward()
    assert (probs.grad[..., :8, 4] == -1).all() and (probs.grad[..., 8:, 4] == 0.5).all()
    assert (probs.grad[..., 5] == 0).all()


@pytest.mark.parametrize("fill", [0.0, 1.0, "half"])
def test_swapping_sets_constant_maps(fill):
    probs = probs_like()
    mask = torch.full((1, 16), float(fill)) if fill != "half" else (torch.arange(16) < 8).float()[None]
    swapped = swap_attention_(probs.clone(), [SiteRegion(mask, (2, 3))])
    for w in (2, 3):
        assert_close(swapped[..., w], (mask / 2).expand(2, 3, 16))
    keep = [t for t in range(77) if t not in (2, 3)]
    assert torch.equal(swapped[..., keep], probs[..., keep])


def test_paint_with_words_adds_scaled_max_inside_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 77, generator=g)
    mask = (torch.arange(16) < 4).float()[None]
    painted = paint_with_words_(logits.clone(), [SiteRegion(mask, (7,))], weight=0.3, sigma=14.6)
    bias = painted - logits
    expected = 0.3 * math.log(1 + 14.6) * logits.amax(dim=(-2, -1))            # (B, heads)
    assert_close(bias[:, :, :4, 7], expected[..., None].expand(2, 3, 4))
    assert (bias[:, :, 4:, 7] == 0).all()
    assert (bias[..., [t for t in range(77) if t != 7]] == 0).all()


def test_paint_and_suppress_written_out():
    """paint-and-suppress per location p and word w of a region with (soft) mask m:
    bias = strength * w' * log(1 + sigma) * max(QK^T) * (m[p] - lambda * (1 - m[p]))."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 16, 77, generator=g)
    mask = torch.rand(1, 16, generator=g)                                      # soft: cells partly inside
    regions = [SiteRegion(mask, (7, 8), strength=1.5), SiteRegion(1 - mask, (11,))]
    sigma = torch.tensor([14.6, 2.0])                                          # one per latent
    bias = paint_with_words_(logits.clone(), regions, weight=1.0, sigma=sigma, outside=0.5) - logits
    expected = torch.zeros_like(logits)
    for b in range(2):
        for h in range(3):
            top = float(logits[b, h].max())
            for region in regions:
                for w in region.positions:
                    for p in range(16):
                        m = float(region.mask[0, p])
                        expected[b, h, p, w] = region.strength * math.log(1 + float(sigma[b])) * top * (m - 0.5 * (1 - m))
    assert_close(bias, expected)


def test_paint_and_suppress_pushes_small_regions_down_less_written_out():
    """A region of share a < SMALL_REGION (0.05) of the grid: lambda * a / 0.05 outside;
    per latent when the mask has one row per latent; 0.05 and above: lambda itself."""
    from comfyui_maskattn.maskattn_ops.region_attention import SMALL_REGION
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 100, 77, generator=g)
    mask = torch.zeros(2, 100)
    mask[0, :2] = 1.0                 # latent 0: 2% of the grid
    mask[1, :5] = 1.0                 # latent 1: 5%
    bias = paint_with_words_(logits.clone(), [SiteRegion(mask, (9,))], weight=1.0, sigma=1.0, outside=0.5) - logits
    for b, share in ((0, 0.02), (1, 0.05)):
        for h in range(2):
            term = math.log(2.0) * float(logits[b, h].max())
            lam = 0.5 * min(1.0, share / SMALL_REGION)
            assert_close(bias[b, h, 50, 9], torch.tensor(-lam * term))     # outside
            assert_close(bias[b, h, 0, 9], torch.tensor(term))             # inside: unchanged


@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
def test_region_strength_scales_each_region_of_each_method(strength):
    """Bind Region to Words' strength: the region's term of Endo's loss times strength,
    swapping's constant map blended in by strength (0: the model's own, 1: the constant),
    paint-with-words' added logit times strength; the other region unchanged."""
    probs, mask = probs_like(), (torch.arange(16) < 8).float()[None]
    weak, other = SiteRegion(mask, (2, 3), strength), SiteRegion(1 - mask, (5,))
    one = masked_attention_loss(probs, [SiteRegion(mask, (2, 3))])
    assert_close(masked_attention_loss(probs, [weak, other]), strength * one + masked_attention_loss(probs, [other]))
    if strength <= 1:                                     # (above 1 it extrapolates past the constant map)
        swapped = swap_attention_(probs.clone(), [weak])
        assert_close(swapped[..., 2], strength * (mask / 2).expand(2, 3, 16) + (1 - strength) * probs[..., 2])
    logits = torch.randn(2, 3, 16, 77, generator=torch.Generator().manual_seed(1))
    full = paint_with_words_(logits.clone(), [SiteRegion(mask, (2, 3)), other], 0.3, 14.6) - logits
    scaled = paint_with_words_(logits.clone(), [weak, other], 0.3, 14.6) - logits
    assert_close(scaled[..., [2, 3]], strength * full[..., [2, 3]])
    assert torch.equal(scaled[..., 5], full[..., 5])


def test_edits_write_through_the_cond_chunks_views_only():
    """The sites edit their own temporaries in place through SiteCall.cond_chunks()
    slices: the cond chunks change exactly as the op on a copy, uncond rows stay
    bit-equal, wherever the host put the cond chunks."""
    call = SiteCall(site=None, grid=(4, 4), batch=6, tokens=77, cond_or_uncond=(0, 1, 0),
                    sigmas=torch.tensor([3.0, 7.0]), q=torch.zeros(6, 16, 8), k=torch.zeros(6, 77, 8))
    assert call.cond_chunks() == [slice(0, 2), slice(4, 6)]
    mask = (torch.arange(16) < 8).float()[None]
    regions = [SiteRegion(mask, (2, 3))]
    probs = probs_like(b=6)
    logits = torch.randn(6, 3, 16, 77, generator=torch.Generator().manual_seed(1))
    swapped, painted = probs.clone(), logits.clone()
    for rows in call.cond_chunks():
        swap_attention_(swapped[rows], regions)
        paint_with_words_(painted[rows], regions, 0.3, call.sigmas)
    for rows in call.cond_chunks():
        assert torch.equal(swapped[rows], swap_attention_(probs[rows].clone(), regions))
        assert torch.equal(painted[rows], paint_with_words_(logits[rows].clone(), regions, 0.3, call.sigmas))
    assert torch.equal(swapped[2:4], probs[2:4]) and torch.equal(painted[2:4], logits[2:4])
    assert not torch.equal(swapped[0:2], probs[0:2]) and not torch.equal(painted[4:6], logits[4:6])


def test_masks_outside_0_to_1_or_with_nan_are_refused_never_clamped():
    from comfyui_maskattn.maskattn_ops.regions import check_mask
    half = torch.zeros(1, 8, 8)
    half[..., :4] = 1.0
    assert torch.equal(check_mask(half, "red"), half) and check_mask(half[0], "red").shape == (1, 8, 8)
    nan = half.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="the mask for 'red' holds NaN or Inf"):
        check_mask(nan, "red")
    with pytest.raises(ValueError, match=r"the mask for 'red' has values from 0 to 255; a MASK holds 0..1"):
        check_mask(half * 255, "red")
    with pytest.raises(ValueError, match="has values from -1"):
        check_mask(half - 1, "red")
    with pytest.raises(ValueError, match=r"is empty \(all zero\) in batch item\(s\) \[1\]"):
        check_mask(torch.stack([half[0], torch.zeros(8, 8)]), "red")


def test_a_region_of_another_shape_than_the_image_is_refused():
    """A box bound for a 128x128 image, sampled at 128x192: no silent stretch."""
    from comfyui_maskattn.maskattn_ops.region_attention import check_aspect
    from comfyui_maskattn.maskattn_ops.regions import Region, box_mask
    square = Region(box_mask(0, 0, 64, 64, 128, 128, "red"), (2,), 77, "red")
    check_aspect(square, (8, 8))
    check_aspect(square, (4, 4))
    with pytest.raises(ValueError, match=r"the region for .red. is 128x128 but the image .*\(a 12x8 grid"):
        check_aspect(square, (8, 12))
    wide = Region(box_mask(0, 0, 64, 64, 1024, 1000, "red"), (2,), 77, "red")   # latent 125x128
    check_aspect(wide, (63, 64))             # the grid rounds 62.5 up: still the same image
    check_aspect(wide, (125, 128))
