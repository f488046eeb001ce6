"""maskattn_ops.attention: fast path vs reference path, and the suppression rules."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from comfyui_maskattn.maskattn_ops.attention import (
    NEG, biased_attention, guard_bias, reference_attention, suppress)

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def qkv(batch, n, t, heads, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, heads * dim, generator=g)
    k = torch.randn(batch, t, heads * dim, generator=g)
    v = torch.randn(batch, t, heads * dim, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_keep(shape, seed=1, p=0.6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,n,t,heads,dim", [(1, 16, 77, 2, 16), (2, 64, 77, 4, 8), (3, 12, 154, 1, 32)])
@pytest.mark.parametrize("bias_heads", [1, "all"])
def test_fast_path_matches_reference(dtype, batch, n, t, heads, dim, bias_heads):
    q, k, v = qkv(batch, n, t, heads, dim, dtype)
    bias = suppress(random_keep((batch, heads if bias_heads == "all" else 1, n, t)))
    fast = biased_attention(q, k, v, heads, bias)
    ref, probs = reference_attention(q, k, v, heads, bias)
    assert fast.dtype == dtype and fast.shape == q.shape
    assert_close(fast.float(), ref.float(), **TOL[dtype])
    # suppressed keys get exactly zero probability; each row sums to one
    assert probs.masked_select(bias.expand_as(probs) <= NEG).abs().max() == 0
    assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_keep_bias_is_plain_attention(dtype):
    q, k, v = qkv(2, 32, 77, 2, 16, dtype)
    heads = 2
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, L, d)
    plain = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)
    keep_all = torch.zeros(2, 1, 32, 77, dtype=dtype)
    assert torch.equal(biased_attention(q, k, v, heads, keep_all), plain)
    assert torch.equal(biased_attention(q, k, v, heads, None), plain)
    ref, _ = reference_attention(q, k, v, heads, keep_all)
    assert_close(ref.float(), plain.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_suppressed_row_attends_start_token_only(dtype):
    heads, dim = 2, 8
    q, k, v = qkv(2, 10, 77, heads, dim, dtype)
    keep = random_keep((2, 1, 10, 77))
    keep[:, :, 3] = False          # row 3: every key suppressed
    keep[1, :, 7] = False          # row 7 of the second sample too
    bias = suppress(keep)
    for out in (biased_attention(q, k, v, heads, bias), reference_attention(q, k, v, heads, bias)[0]):
        assert torch.isfinite(out).all()
        # attending only the start token returns its value vector in every head
        assert_close(out[:, 3].float(), v[:, 0].float(), **TOL[dtype])
        assert_close(out[1, 7].float(), v[1, 0].float(), **TOL[dtype])
    _, probs = reference_attention(q, k, v, heads, bias)
    assert torch.equal(probs[:, :, 3, 0], torch.ones_like(probs[:, :, 3, 0]))


def test_neg_inf_and_huge_biases_are_clamped_finite():
    q, k, v = qkv(1, 8, 77, 2, 8, torch.float16)
    bias = torch.zeros(1, 1, 8, 77)
    bias[..., 5:] = float("-inf")
    bias[:, :, 2] = -1e30
    out = biased_attention(q, k, v, 2, bias)
    assert torch.isfinite(out).all()
    assert guard_bias(bias, (1, 2, 8, 77)).min() == NEG


def test_bad_bias_shapes_are_named():
    q, k, v = qkv(1, 8, 77, 2, 8, torch.float32)
    with pytest.raises(ValueError, match=r"does not broadcast"):
        biased_attention(q, k, v, 2, torch.zeros(1, 1, 9, 77))
    with pytest.raises(ValueError, match=r"4 dims"):
        biased_attention(q, k, v, 2, torch.zeros(8, 77))
    with pytest.raises(ValueError, match=r"has 1 keys, the context has 77"):
        biased_attention(q, k, v, 2, torch.zeros(1, 1, 8, 1))
