"""Test harness. Tiers: tests/ops (pure torch, no host), tests/host (the real ComfyUI
in-process, tiny models), tests/e2e (servers, the browser, subprocess CLIs); see
scripts/test.sh. Fixtures are lazy: a test pays only for what it asks for. The host is
imported once per run, tiny models (SDXL's architecture; SD1.x's and SD2.x's for the
tests marked ``every_family``) are built once per run (in
inference mode, as the host's loader nodes build them), and the host's node registry
(init_extra_nodes, ~40 s) only for tests that run graphs or check registration."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

try:        # this repo as a package, and the lab: put in the venv by scripts/setup.sh
    import comfyui_maskattn  # noqa: F401
    from maskattn_lab import host as lab_host
except ImportError as e:
    raise ImportError(f"{e}: run the tests in the venv that scripts/setup.sh made "
                      "(bash scripts/test.sh does both)") from None

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 30)}


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory):
    """Eight 128px images of one flat shape each, with captions naming it."""
    folder = tmp_path_factory.mktemp("pairs")
    for i in range(8):
        color = list(COLORS)[i % 4]
        kind = "circle" if i % 2 else "square"
        img = Image.new("RGB", (128, 128), (240, 240, 240))
        box = [10 + 8 * i, 20 + 5 * i, 60 + 8 * i, 70 + 5 * i]
        (ImageDraw.Draw(img).ellipse if kind == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLORS[color])
        img.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {color} {kind}")
        mask = Image.new("L", (128, 128), 0)
        (ImageDraw.Draw(mask).ellipse if kind == "circle" else ImageDraw.Draw(mask).rectangle)(box, fill=255)
        mask.save(folder / f"{i}.mask.png")
        (folder / f"{i}.masks.json").write_text(json.dumps({f"{color} {kind}": f"{i}.mask.png"}))
    return folder



@pytest.fixture(scope="session")
def host() -> Path:
    """The real ComfyUI, imported for the CPU. No host is an error, never a skip."""
    return lab_host.import_host()


@pytest.fixture(scope="session")
def host_nodes(host):
    """The host's node registry after it loaded core, extras and custom_nodes/ (us
    included), with every log record it wrote while doing so."""
    import nodes

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return nodes, records


@pytest.fixture(scope="session")
def patching(host):
    from comfyui_maskattn.nodes import patching
    return patching


@pytest.fixture(scope="session")
def nodes_regions(host):
    from comfyui_maskattn.nodes import nodes_regions
    return nodes_regions


@pytest.fixture(scope="session")
def tiny(host):
    """The demo models' builders (the tiny SDXL's architecture and config)."""
    from comfyui_maskattn.nodes import demo_models
    return demo_models


@pytest.fixture(scope="session")
def tiny_models(tiny, request):
    """(MODEL, CLIP, VAE) of the tiny SDXL, built once; tests clone, never mutate. A test
    marked ``@every_family`` (helpers.py) gets each family's tiny model in turn (the
    fixtures built on this one follow), by its Load MaskAttn Demo Model key."""
    import torch
    from comfyui_maskattn.nodes.nodes_demo import TINY_RANDOM, TINY_RANDOM_MODELS
    family, v_prediction = TINY_RANDOM_MODELS[getattr(request, "param", TINY_RANDOM)]
    with torch.inference_mode():
        return tiny.build_all(seed=0, family=family, v_prediction=v_prediction)


@pytest.fixture(scope="session")
def encode(tiny_models):
    """Text -> CONDITIONING with the tiny CLIP, through the host's CLIPTextEncode."""
    import torch
    import nodes
    _, clip, _ = tiny_models

    def run(text: str):
        with torch.inference_mode():
            return nodes.CLIPTextEncode().encode(clip, text)[0]
    return run


@pytest.fixture(scope="session")
def sample(encode):
    """Runs the host's KSampler path (common_ksampler) under inference mode, as the
    executor does; returns the final latent."""
    import torch
    import nodes

    def run(model, *, prompt="a red circle and a blue square", negative="", sampler="euler",
            scheduler="normal", steps=4, cfg=5.0, seed=0, batch=1, height=16, width=16):
        latent = {"samples": torch.zeros(batch, 4, height, width)}
        with torch.inference_mode():
            out = nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler,
                                        encode(prompt), encode(negative), latent)[0]
        return out["samples"].clone()
    return run


class _ServerStub:
    """What PromptExecutor needs of the server, recording the messages it sends."""
    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata = {}

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def _executed(executor, prompt: dict) -> dict:
    """Validates an API-format prompt with the host and runs it through ``executor``;
    returns the history entry's outputs, or raises with the host's errors."""
    import uuid

    import execution
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise AssertionError(f"prompt invalid: {error} {node_errors}")
    executor.execute(prompt, prompt_id, {}, outputs)
    if not executor.success:
        errors = [m for m in executor.status_messages if m[0] == "execution_error"]
        raise RuntimeError(f"execution failed: {errors}")
    return executor.history_result["outputs"]


def _executor():
    import execution
    return execution.PromptExecutor(_ServerStub(), cache_type=execution.CacheType.CLASSIC)


@pytest.fixture(scope="session")
def run_graph(host_nodes):
    """Runs a prompt through a fresh executor of the real host (no cache from earlier
    runs); returns the history entry's outputs."""
    return lambda prompt: _executed(_executor(), prompt)


@pytest.fixture
def graph_queue(host_nodes):
    """Runs prompts through ONE executor, its cache kept between them as a running
    server's queue keeps it; returns (outputs, the executor) of each run."""
    executor = _executor()
    return lambda prompt: (_executed(executor, prompt), executor)
