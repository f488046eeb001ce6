"""maskattn_ops gates and heads: STE, start token, fresh heads, the file format."""
import json

import pytest
import torch
from torch.testing import assert_close

from comfyui_maskattn.maskattn_ops.attention import NEG, SUPPRESSED, biased_attention, reference_attention
from comfyui_maskattn.maskattn_ops.fingerprint import FINGERPRINT_SAMPLES, ModelFingerprint
from comfyui_maskattn.maskattn_ops.gate_head import GateHead, gate_bias, gated_probs, start_tokens, straight_through
from comfyui_maskattn.maskattn_ops.gate_providers import GateBias, self_attention_bias
from comfyui_maskattn.maskattn_ops.heads import HeadSet, HeadsFileError, add_fingerprint, load_heads, save_heads
from comfyui_maskattn.maskattn_ops.sites import Site, SiteCall
from comfyui_maskattn.maskattn_ops.mask_supervision import balanced_weights, mask_supervision_loss

SITES = [Site(("input", 4, 0), 2, 64, 4, 16, 64), Site(("output", 3, 1), 2, 64, 4, 16, 64)]


def test_ste_forward_is_hard_and_backward_is_sigmoid_gradient():
    logits = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    probs = torch.sigmoid(logits)
    gate = straight_through(probs, 0.5)
    assert torch.equal(gate.detach(), (probs >= 0.5).double())
    weights = torch.randn_like(gate)
    (gate * weights).sum().backward()
    assert_close(logits.grad, weights * probs.detach() * (1 - probs.detach()))
    # gradcheck-style: the STE's analytical gradient equals the NUMERICAL gradient of its
    # soft part (the sigmoid), by central differences (the hard part's is 0 almost everywhere)
    x = logits.detach().requires_grad_()
    (ste_grad,) = torch.autograd.grad(straight_through(torch.sigmoid(x), 0.5).sum(), x)
    eps = 1e-6
    numerical = (torch.sigmoid(x.detach() + eps) - torch.sigmoid(x.detach() - eps)) / (2 * eps)
    assert_close(ste_grad, numerical, atol=1e-8, rtol=1e-6)


def test_threshold_moves_the_cut():
    probs = torch.tensor([0.2, 0.4, 0.6, 0.8])
    assert straight_through(probs, 0.5).tolist() == [0, 0, 1, 1]
    assert straight_through(probs, 0.7).tolist() == [0, 0, 0, 1]


def test_start_tokens_per_chunk():
    assert start_tokens(77).nonzero().flatten().tolist() == [0]
    assert start_tokens(154).nonzero().flatten().tolist() == [0, 77]
    assert start_tokens(10).nonzero().flatten().tolist() == [0]


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_start_token_never_suppressed_and_rows_never_empty(mode):
    logits = torch.full((2, 154, 3, 5), -20.0)          # the head wants to suppress everything
    bias, gate = gate_bias(logits, 0.5, mode)
    assert bias.shape == (2, 1, 15, 154)
    assert (bias[..., 0] == 0).all() and (bias[..., 77] == 0).all()
    assert (bias > SUPPRESSED).any(-1).all()             # every location keeps some token
    assert (gate[:, 0] == 1).all()
    q, k, v = torch.randn(2, 15, 32), torch.randn(2, 154, 32), torch.randn(2, 154, 32)
    assert torch.isfinite(biased_attention(q, k, v, 2, bias)).all()


def test_hard_bias_is_exactly_zero_or_neg():
    bias, gate = gate_bias(torch.randn(1, 77, 4, 4) * 3, 0.5, "hard")
    assert set(bias.unique().tolist()) <= {0.0, NEG}
    assert set(gate.unique().tolist()) <= {0.0, 1.0}


def test_soft_bias_is_log_probability():
    logits = torch.randn(1, 77, 2, 2)
    bias, gate = gate_bias(logits, 0.5, "soft")
    expected = torch.nn.functional.logsigmoid(logits)
    expected[:, 0] = 0
    assert_close(bias[0, 0], expected[0].flatten(1).T)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_gated_probs_equal_the_biased_softmax(mode):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 12, 32), torch.randn(2, 77, 32), torch.randn(2, 77, 32)
    bias, gate = gate_bias(torch.randn(2, 77, 3, 4) * 2, 0.5, mode)
    assert (gate[:, 1:] == 0).any() or mode == "soft"
    biased_out, biased_probs = reference_attention(q, k, v, 2, bias)
    product_out, product_probs = reference_attention(q, k, v, 2, edit=lambda p: gated_probs(p, gate))
    assert_close(product_probs, biased_probs, atol=1e-6, rtol=1e-5)
    assert_close(product_out, biased_out, atol=1e-5, rtol=1e-5)
    assert_close(biased_attention(q, k, v, 2, bias), biased_out, atol=1e-5, rtol=1e-4)


def test_suppressed_locations_get_a_gradient_through_the_product_only():
    """Why training applies gates as a product: through the bias a switched-off gate has
    gradient 0 (it can never come back) and a kept one is scaled by |NEG|."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 6, 32), torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    target = torch.randn(1, 6, 32)
    logits = torch.randn(1, 77, 2, 3).requires_grad_()

    def gate_gradient(through_product: bool) -> tuple[torch.Tensor, torch.Tensor]:
        bias, gate = gate_bias(logits, 0.5, "hard")
        if through_product:
            out, _ = reference_attention(q, k, v, 2, edit=lambda p: gated_probs(p, gate))
        else:
            out, _ = reference_attention(q, k, v, 2, bias)
        (grad,) = torch.autograd.grad((out - target).pow(2).sum(), logits)
        return grad, gate.detach()

    product_grad, gate = gate_gradient(True)
    bias_grad, _ = gate_gradient(False)
    off, on = (gate == 0), (gate == 1)
    on[:, 0] = False                                     # start tokens are forced on: no gradient
    assert off.any() and on.any()
    assert (bias_grad[off] == 0).all()
    assert (product_grad[off] != 0).float().mean() > 0.9
    # at kept gates both say dL/dlogit_t, the bias path times |NEG| = 1e4
    assert_close(bias_grad[on], -NEG * product_grad[on], rtol=1e-3, atol=1e-6)


def test_mask_supervision_weighs_inside_and_outside_equally():
    """A phrase on 4 of 64 cells: switching it off everywhere is as wrong as keeping it
    everywhere (a plain mean would call "off everywhere" nearly right)."""
    mask = torch.zeros(32, 32)
    mask[:8, :8] = 1                                         # 4 of the 8x8 grid's cells
    weights = balanced_weights(torch.nn.functional.adaptive_avg_pool2d(mask[None, None], (8, 8))[0, 0])
    assert_close(weights.sum(), torch.tensor(1.0))
    assert_close(weights[:2, :2].sum(), torch.tensor(0.5))
    assert_close(balanced_weights(torch.zeros(8, 8)).sum(), torch.tensor(1.0))
    targets = [[([1, 2], mask)]]
    loss = lambda value: mask_supervision_loss([torch.full((1, 77, 8, 8), value)], targets)  # noqa: E731
    assert_close(loss(-5.0), loss(5.0))
    exact = torch.full((1, 77, 8, 8), -5.0)
    exact[:, :, :2, :2] = 5.0
    assert mask_supervision_loss([exact], targets) < 0.01 < loss(-5.0)


def test_fresh_head_keeps_everything():
    head = GateHead(channels=64, key_dim=64)
    logits = head(torch.randn(2, 12, 64), torch.randn(2, 77, 64), (3, 4))
    assert logits.shape == (2, 77, 3, 4)
    assert torch.equal(logits, torch.full_like(logits, 1.0))
    bias, _ = gate_bias(logits)
    assert (bias == 0).all()


def test_head_gradients_reach_every_parameter_after_one_step():
    head = GateHead(channels=64, key_dim=64)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        logits = head(torch.randn(2, 12, 64), torch.randn(2, 77, 64), (3, 4))
        bias, gate = gate_bias(logits)
        gate.mean().backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def trained_like(heads: HeadSet) -> HeadSet:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p))
    return heads


def test_sampling_gates_are_constants_and_training_gates_reach_the_heads():
    """Sampling: guidance backpropagates to the latent through every site, and a binary
    gate must not pass it a straight-through derivative. Training: gradients reach the heads."""
    heads = trained_like(HeadSet.for_sites(SITES[:1]))
    q = torch.randn(2, 12, 64, requires_grad=True)
    call = SiteCall(site=SITES[0], grid=(3, 4), batch=2, tokens=77, cond_or_uncond=(0,),
                    sigmas=torch.ones(2), q=q, k=torch.randn(2, 77, 64))
    sampling = GateBias(heads)
    bias = sampling(call)
    assert bias is not None and not bias.requires_grad and sampling.probs_edit(call) is None
    training = GateBias(heads, differentiable=True)
    assert training(call) is None
    probs = torch.softmax(torch.randn(2, 1, 12, 77), dim=-1)
    gated = training.probs_edit(call)(probs)
    assert_close(gated, torch.softmax(probs.log() + bias, dim=-1), atol=1e-6, rtol=1e-5)
    gated.pow(2).sum().backward()
    assert all(p.grad is not None for p in heads.parameters()) and q.grad is not None


def test_save_load_round_trip_is_bit_equal(tmp_path):
    heads = trained_like(HeadSet.for_sites(SITES, threshold=0.5, training={"steps": 10}))
    path = tmp_path / "h.safetensors"
    save_heads(heads, path)
    loaded = load_heads(path)
    assert loaded.site_names == heads.site_names == ["input.4.0", "output.3.1"]
    assert loaded.training_summary == {"steps": 10} and loaded.context_dim == 64
    for (name, a), (_, b) in zip(heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert "input.4.0.features.0.weight" in f.keys()
        meta = f.metadata()
    assert meta["format"] == "maskattn-heads" and json.loads(meta["sites"]) == ["input.4.0", "output.3.1"]
    assert json.loads(meta["channels"]) == {"input.4.0": 64, "output.3.1": 64}


def test_bad_files_are_named(tmp_path):
    good = tmp_path / "good.safetensors"
    save_heads(HeadSet.for_sites(SITES), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a tensor file at all" * 10)
    pickled = tmp_path / "heads.pt"
    torch.save(HeadSet.for_sites(SITES).state_dict(), pickled)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "lora"})
    cases = {truncated: "not a readable safetensors file", garbage: "not a readable safetensors file",
             pickled: "pickle", other: "not MaskAttn heads", tmp_path / "absent.safetensors": "no such file"}
    for path, cause in cases.items():
        with pytest.raises(HeadsFileError, match=cause) as err:
            load_heads(path)
        assert str(path) in str(err.value)


def test_heads_for_another_model_are_refused_naming_both():
    heads = HeadSet.for_sites(SITES)
    wider = [Site(s.key, 2, 128, 8, 16, 64) for s in SITES]
    with pytest.raises(HeadsFileError, match=r"query width 64 .* has 128"):
        heads.check_fits(wider)
    with pytest.raises(HeadsFileError, match=r"sites \['output.3.1'\] that the model does not have"):
        heads.check_fits(SITES[:1])
    other_text = [Site(s.key, 2, 64, 4, 16, 2048) for s in SITES]
    with pytest.raises(HeadsFileError, match=r"text width 64; the model has 2048"):
        heads.check_fits(other_text)
    heads.check_fits(SITES)


def test_the_family_heads_were_trained_on_is_kept_and_checked(tmp_path):
    """The family survives the file; another family is refused before widths are compared
    (SD1.x and SD2.x can share them); a file that records none (or the old demo's
    "sdxl-tiny-demo") is read as it was written."""
    path = tmp_path / "sd2.safetensors"
    save_heads(HeadSet.for_sites(SITES, base_family="sd2"), path)
    heads = load_heads(path)
    assert heads.base_family == "sd2"
    heads.check_fits(SITES, family="sd2")
    heads.check_fits(SITES)                                   # the model's family unknown: widths only
    with pytest.raises(HeadsFileError, match=r"trained on an SD2.x model; this MODEL is SD1.x"):
        heads.check_fits(SITES, "this MODEL", family="sd1")
    with pytest.raises(HeadsFileError, match=r"trained on an SD2.x model; the model is SDXL"):
        heads.check_fits([Site(s.key, 2, 128, 8, 16, 64) for s in SITES], family="sdxl")
    unrecorded = HeadSet.for_sites(SITES)
    assert unrecorded.base_family == ""
    unrecorded.check_fits(SITES, family="sd1")
    assert HeadSet.for_sites(SITES, base_family="sdxl-tiny-demo").base_family == "sdxl"


def test_self_attention_bias_separates_object_regions():
    active = torch.ones(1, 77, 4, 4, dtype=torch.bool)       # every token everywhere ...
    active[:, 2] = False
    active[:, 2, :, :2] = True                                # ... but token 2: left half
    active[:, 3] = False
    active[:, 3, :2, 2:] = True                               # token 3: top-right quadrant
    bias = self_attention_bias(active)[0, 0]                  # (N, N), N = 16, row-major h x w
    left = torch.tensor([c < 2 for r in range(4) for c in range(4)])
    top_right = torch.tensor([r < 2 and c >= 2 for r in range(4) for c in range(4)])
    unclaimed = ~left & ~top_right                            # bottom-right quadrant
    allowed = bias == 0
    for p in range(16):
        expected = unclaimed.clone()
        if left[p]:
            expected |= left
        if top_right[p]:
            expected |= top_right
        assert torch.equal(allowed[p], expected), p
    assert allowed.any(-1).all()


def test_self_attention_bias_is_open_when_no_token_is_selective():
    everywhere = torch.ones(2, 154, 3, 5, dtype=torch.bool)
    assert (self_attention_bias(everywhere) == 0).all()
    nowhere = torch.zeros(2, 154, 3, 5, dtype=torch.bool)
    assert (self_attention_bias(nowhere) == 0).all()


def test_damaged_heads_files_are_refused_naming_file_and_cause(tmp_path):
    """A NaN weight, integer (quantized) tensors, and missing or malformed metadata each
    give a HeadsFileError that names the file and the cause, never a raw KeyError or a
    heads set that gates nothing or everything."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    good = tmp_path / "good.safetensors"
    save_heads(HeadSet.for_sites(SITES), good)
    with safe_open(str(good), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    def written(name, tensors=tensors, **changes):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={k: v for k, v in {**meta, **changes}.items() if v is not None})
        return path

    nan = dict(tensors)
    nan["input.4.0.tokens.weight"] = nan["input.4.0.tokens.weight"].clone()
    nan["input.4.0.tokens.weight"][0, 0] = float("nan")
    int8 = {k: (v * 100).to(torch.int8) for k, v in tensors.items()}
    cases = {written("nan", nan): "NaN or Inf .*input.4.0.tokens.weight",
             written("int8", int8): "floating-point weights, this file holds int8",
             written("no_width", context_dim=None): "metadata field 'context_dim' is missing",
             written("bad_width", context_dim="wide"): "metadata field 'context_dim' is malformed: 'wide'",
             written("bad_sites", sites="[not json"): "metadata field 'sites' is malformed",
             written("bad_version", format_version="two"): "metadata field 'format_version' is malformed"}
    for path, cause in cases.items():
        with pytest.raises(HeadsFileError, match=cause) as err:
            load_heads(path)
        assert str(path) in str(err.value)
    assert load_heads(written("unchanged")).site_names == ["input.4.0", "output.3.1"]


def site_weights(seed: int, dtype=torch.float32) -> dict:
    """attn2 to_q / to_k weights of SITES, as a model of that seed would hold them."""
    g = torch.Generator().manual_seed(seed)
    return {f"{s.name}.{w}": (torch.randn(64, 64, generator=g) * 0.05).to(dtype)
            for s in SITES for w in ("to_q", "to_k")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_fingerprint_knows_its_model_in_any_dtype_and_not_another(dtype):
    trained_on = ModelFingerprint.of(site_weights(0))
    assert trained_on.same_model(ModelFingerprint.of(site_weights(0, dtype)))       # the same checkpoint, cast
    assert not trained_on.same_model(ModelFingerprint.of(site_weights(1, dtype)))   # another one, same widths
    tuned = {k: w + 0.05 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
             for k, w in site_weights(0).items()}                                   # a light fine-tune: 5% of std
    assert not trained_on.same_model(ModelFingerprint.of(tuned))
    one_site = dict(site_weights(0))
    one_site["output.3.1.to_k"] = site_weights(3)["output.3.1.to_k"]                # one weight of one site
    assert not trained_on.same_model(ModelFingerprint.of(one_site))


@pytest.mark.parametrize("recorded, model", [(torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16),
                                             (torch.bfloat16, torch.float8_e4m3fn)])
def test_fingerprint_survives_double_rounding(recorded, model):
    """Heads trained on a bf16 copy, the model loaded as an fp16 one of the same fp32
    checkpoint: rounded twice, a few samples move by one step of the coarser dtype."""
    trained_on = ModelFingerprint.of(site_weights(0, recorded))
    assert 0 < trained_on.distance(ModelFingerprint.of(site_weights(0, model)))
    assert trained_on.same_model(ModelFingerprint.of(site_weights(0, model)))
    assert not trained_on.same_model(ModelFingerprint.of(site_weights(1, model)))


def test_fingerprint_round_trips_through_the_file_and_is_optional(tmp_path):
    heads = HeadSet.for_sites(SITES)
    save_heads(heads, tmp_path / "old.safetensors")
    assert load_heads(tmp_path / "old.safetensors").fingerprint is None                # files before it: none
    heads.fingerprint = ModelFingerprint.of(site_weights(0, torch.bfloat16))
    save_heads(heads, tmp_path / "new.safetensors")
    loaded = load_heads(tmp_path / "new.safetensors")
    assert loaded.fingerprint == heads.fingerprint and loaded.fingerprint.dtype == torch.bfloat16
    assert loaded.source == "new.safetensors"
    assert {len(v) for v in loaded.fingerprint.values.values()} == {FINGERPRINT_SAMPLES}


@pytest.mark.parametrize("raw", ["{", "[]", '{"dtype": "float32"}', '{"dtype": "int8", "values": {"a": [1]}}',
                                 '{"dtype": "float32", "values": {"a": [1, 2]}}', '{"dtype": "nope", "values": {}}'])
def test_malformed_fingerprint_is_refused_naming_file_and_field(tmp_path, raw):
    from safetensors.torch import save_file
    heads = HeadSet.for_sites(SITES)
    tensors = {f"{n}.{k}": v.contiguous() for n in heads.site_names for k, v in heads.head(n).state_dict().items()}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**heads.metadata(), "model_fingerprint": raw})
    with pytest.raises(HeadsFileError, match=r"bad.safetensors: metadata field 'model_fingerprint' is malformed"):
        load_heads(tmp_path / "bad.safetensors")


def test_adding_a_fingerprint_keeps_every_tensor_bit_for_bit(tmp_path):
    from safetensors.torch import load_file
    heads = HeadSet.for_sites(SITES, training={"steps": 3})
    for p in heads.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "heads.safetensors"
    save_heads(heads, path)
    before = load_file(str(path))
    fingerprint = ModelFingerprint.of(site_weights(0))
    add_fingerprint(path, fingerprint)
    after = load_file(str(path))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    loaded = load_heads(path)
    assert loaded.fingerprint == fingerprint and loaded.training_summary == {"steps": 3}
