"""The toy data generator and evaluator are right: ground truth scores perfectly, and
worse images score worse."""
import numpy as np
import pytest

from comfyui_maskattn.evaluation.scoring import objects, precision_recall_binding, region_miou
from comfyui_maskattn.evaluation.shapes import render, scene


def test_scenes_are_deterministic_and_named():
    a, b = scene(7), scene(7)
    assert a == b and a.caption == b.caption
    assert scene(8) != a
    counts = {len(scene(s).shapes) for s in range(60)}
    assert counts == {1, 2, 3, 4}
    assert all(w in a.caption for w in (s.words for s in a.shapes))


@pytest.mark.parametrize("seed", range(12))
def test_ground_truth_scores_one(seed):
    s = scene(seed)
    image, masks = render(s)
    pixels = np.asarray(image)
    assert region_miou(pixels, masks) == 1.0
    precision, recall, binding = precision_recall_binding(pixels, [(x.color, x.kind) for x in s.shapes])
    assert (precision, recall) == (1.0, 1.0)
    assert binding == 1.0, (objects(pixels), s.shapes)


@pytest.mark.parametrize("seed", range(6))
def test_shifted_image_scores_lower(seed):
    s = scene(seed)
    image, masks = render(s)
    shifted = np.roll(np.asarray(image), shift=(s.size // 6, s.size // 6), axis=(0, 1))
    assert region_miou(shifted, masks) < 1.0


def test_missing_and_extra_objects():
    s = scene(3, max_objects=4)
    while len(s.shapes) < 2:
        s = scene(len(s.shapes) + 100)
    image, _ = render(s)
    named = [(x.color, x.kind) for x in s.shapes]
    extra = named + [("purple" if "purple" not in dict(named) else "orange", "circle")]
    precision, recall, _ = precision_recall_binding(np.asarray(image), extra)
    assert precision == 1.0 and recall < 1.0
