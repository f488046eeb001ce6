"""Guidance's backward keeps only the inputs of the UNet's heavy parts (each ResBlock, each
transformer block's self-attention and feed-forward) and recomputes their insides
(nodes/patching.py, RECOMPUTED_PARTS): the same latent as keeping everything, with the
feed-forward's wide activations never held."""
import pytest
import torch

from test_guidance import guide, region_prompt, regions  # noqa: F401, F811  (its fixtures)


class SavedForBackward:
    """Records the shape of every tensor autograd saves outside a recomputed part."""
    def __init__(self):
        self.shapes = []

    def __enter__(self):
        def pack(t):
            self.shapes.append(tuple(t.shape))
            return t
        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self.hooks.__exit__(*exc)


def feed_forward_widths(model) -> set[int]:
    """The inner widths of every transformer block's feed-forward (GEGLU: 2 x 4 x channels)."""
    unet = model.get_model_object("diffusion_model")
    return {m.ff.net[0].proj.out_features for m in unet.modules() if hasattr(m, "ff") and hasattr(m.ff, "net")}


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_recomputation_gives_the_same_latent(nodes_regions, patching, tiny_models, regions, sample, sampler):
    model = tiny_models[0]
    recomputed = sample(guide(nodes_regions, model, regions), sampler=sampler, steps=4)
    kept = sample(patching.keeping_activations(guide(nodes_regions, model, regions)), sampler=sampler, steps=4)
    assert not torch.equal(recomputed, sample(model, sampler=sampler, steps=4))      # it guided
    assert torch.equal(recomputed, kept)


def test_the_guidance_pass_keeps_no_feed_forward_activation(nodes_regions, patching, tiny_models, regions, sample):
    model = tiny_models[0]
    widths = feed_forward_widths(model)
    assert widths
    for guided, keeps in ((patching.keeping_activations(guide(nodes_regions, model, regions)), True),
                          (guide(nodes_regions, model, regions), False)):
        with SavedForBackward() as saved:
            sample(guided, steps=3)
        assert saved.shapes, "the guidance pass saved nothing for backward: did it run?"
        assert any(shape and shape[-1] in widths for shape in saved.shapes) == keeps

