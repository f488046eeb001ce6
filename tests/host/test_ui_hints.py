"""What the UI shows beyond the graph's result: the demo model says, in the log and on the
sampler's node, when it samples at a size it was not trained for; the widgets a choice
leaves unused are named in the node definitions the frontend extension reads, consistent
with the choices that exist; the seeds of our nodes do not re-randomise every run; search
words reach hosts that read them."""
from __future__ import annotations

import dataclasses
import logging

import pytest

SIZE_WARNING = "was trained at 128x128 px"


class _UiRecorder:
    """Stands in for the running server's PromptServer: records progress texts, ignores
    every other message."""
    def __init__(self):
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text))

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def demo_graph(side: int) -> dict:
    return {
        "1": {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": "shapes-sdxl", "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


@pytest.mark.parametrize("side, warned", [(256, True), (128, False)])
def test_demo_model_says_when_the_size_is_not_the_trained_one(run_graph, monkeypatch, caplog, side, warned):
    import server
    ui = _UiRecorder()
    monkeypatch.setattr(server.PromptServer, "instance", ui, raising=False)
    with caplog.at_level(logging.WARNING):
        run_graph(demo_graph(side))
    logged = [r.getMessage() for r in caplog.records if SIZE_WARNING in r.getMessage()]
    shown = [(node, text) for node, text in ui.texts if SIZE_WARNING in text]
    if warned:
        assert len(logged) == 1 and f"sampling at {side}x{side} px" in logged[0], logged
        assert shown == [("4", logged[0])], ui.texts         # on the sampler's node
    else:
        assert logged == [] and shown == []


def test_unused_widget_hints_name_widgets_and_choices_that_exist(host_nodes):
    """Every input marked 'used when W is V' names a widget W of the same node whose
    options include V, and every 'unused while L is linked' names an input L of it: a
    renamed mode or input cannot leave the frontend greying the wrong widget."""
    from comfyui_maskattn.nodes import NODE_LIST
    from comfyui_maskattn.nodes.widget_hints import UNUSED_WHEN_LINKED, USED_WHEN
    marked = 0
    for node in NODE_LIST:
        info = node.GET_NODE_INFO_V1()
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, spec in inputs.items():
            options = spec[1] if len(spec) > 1 else {}
            for widget, values in options.get(USED_WHEN, {}).items():
                choices = inputs[widget][0] if isinstance(inputs[widget][0], list) else inputs[widget][1]["options"]
                assert set(values) <= set(choices), (info["name"], name, widget, values, choices)
                assert f"Used when {widget} is" in options["tooltip"], (info["name"], name)
                marked += 1
            if UNUSED_WHEN_LINKED in options:
                assert options[UNUSED_WHEN_LINKED] in inputs, (info["name"], name)
                marked += 1
    assert marked == 3 + 1 + 1 + 6        # guidance: alpha, lambda, weight; gating and Visualize: threshold; the box


def test_seeds_of_our_nodes_never_rerandomise(host_nodes):
    """The frontend gives any INT named 'seed' a control that defaults to 'randomize'
    (re-executing the node every run) unless the definition says otherwise."""
    from comfyui_maskattn.nodes import NODE_LIST
    seeds = 0
    for node in NODE_LIST:
        inputs = node.GET_NODE_INFO_V1()["input"]
        for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items():
            if name in ("seed", "noise_seed"):
                assert spec[1].get("control_after_generate") is False, node.__name__
                seeds += 1
    assert seeds == 3     # Load MaskAttn Demo Model, Visualize Gates, Train MaskAttn Heads


def test_search_words_reach_hosts_that_read_them(host_nodes):
    from comfy_api.latest import io

    from comfyui_maskattn.nodes.nodes_regions import MaskAttnRegionGuidance
    from comfyui_maskattn.nodes.widget_hints import newer_schema_fields
    has_field = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
    assert ("search_aliases" in newer_schema_fields(search_aliases=["x"])) == has_field
    assert newer_schema_fields(no_such_field=1) == {}
    schema = MaskAttnRegionGuidance.define_schema()          # builds on this host either way
    if has_field:
        assert "region guidance" in schema.search_aliases
