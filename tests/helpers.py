"""Assertions, bias providers and scripted gate heads shared by the host tests."""
import pytest
import torch
from torch.testing import assert_close

# Load MaskAttn Demo Model's random models of every UNet family the nodes support
# (nodes_demo.TINY_RANDOM_MODELS): a test marked with this runs on each in turn, through
# the ``tiny_models`` fixture and every fixture built on it.
FAMILY_MODELS = ["tiny-sdxl-random", "tiny-sd1-random", "tiny-sd2-random", "tiny-sd2-v-random"]
every_family = pytest.mark.parametrize("tiny_models", FAMILY_MODELS, indirect=True,
                                       ids=["sdxl", "sd1", "sd2", "sd2-v"])


def build_like(tiny, model, **kwargs):
    """A fresh tiny model of ``model``'s family and prediction type (seed 0 unless given)."""
    from comfyui_maskattn.nodes.model_family import family_of
    import comfy.model_base
    v_prediction = model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    return tiny.build_model(**{"seed": 0, **kwargs}, family=family_of(model), v_prediction=v_prediction)


def assert_same_run(actual, expected):
    """Same sampling result up to fp32 rounding: the host's CPU attention (chunked,
    sub-quadratic) and SDPA sum in different orders, and the random tiny model's
    latents reach hundreds, so the absolute tolerance scales with them."""
    assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


class Recorder:
    """A bias provider that records what each call of each site looked like; adds no bias."""
    def __init__(self):
        self.calls = []
        self.moved_to = []

    def __call__(self, call):
        self.calls.append(call)
        return None

    def to(self, device):
        self.moved_to.append(device)
        return self


class Spy:
    """Wraps an installed provider (through patching.map_providers): appends (call, what
    the provider returned) to ``log``, after ``before(call)`` if given; anything else is
    the provider's own."""
    def __init__(self, provider, log: list, before=None):
        self.provider, self.log, self.before = provider, log, before

    def __call__(self, call):
        if self.before is not None:
            self.before(call)
        out = self.provider(call)
        self.log.append((call, out))
        return out

    def __getattr__(self, name):
        return getattr(self.provider, name)


def scripted_heads(heads, off: dict):
    """``heads`` with every head replaced by one whose gate we choose: each token in
    ``off`` is switched off in its part of the grid ("all", or the "left" or "right"
    half), every other token kept everywhere. Returns ``heads``."""
    from comfyui_maskattn.maskattn_ops.gate_head import GateHead

    class ScriptedHead(GateHead):
        def forward(self, q, k, grid):
            logits = torch.full((q.shape[0], k.shape[1], *grid), 10.0, dtype=q.dtype)   # (B, T, h, w)
            half = grid[1] // 2
            for token, part in off.items():
                columns = {"all": slice(None), "left": slice(None, half), "right": slice(half, None)}[part]
                logits[:, token, :, columns] = -10.0
            return logits

    for name in heads.site_names:
        heads.set_head(name, ScriptedHead(*heads.site_shapes()[name]))
    return heads
