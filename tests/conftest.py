"""Test harness: our package loaded as a package, the real ComfyUI host imported once
per run, and tiny SDXL-architecture models built once per run (in inference mode, as
the host's loader nodes build them)."""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import host_env  # noqa: E402

host_env.load_package()  # tests import `comfyui_maskattn.maskattn_ops...` directly


@pytest.fixture(scope="session")
def host() -> Path:
    """The real ComfyUI, imported for the CPU. No host is an error, never a skip."""
    return host_env.import_host()


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
def nodes_regions(host_nodes):
    from comfyui_maskattn.nodes import nodes_regions
    return nodes_regions


@pytest.fixture(scope="session")
def tiny(host):
    from comfyui_maskattn.nodes import tiny_sdxl
    return tiny_sdxl


@pytest.fixture(scope="session")
def tiny_models(tiny):
    """(MODEL, CLIP, VAE) of the tiny SDXL, built once; tests clone, never mutate."""
    import torch
    with torch.inference_mode():
        return tiny.build_all(seed=0)


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


@pytest.fixture(scope="session")
def run_graph(host_nodes):
    """Validates an API-format prompt with the host and runs it through the real
    executor; returns the history entry's outputs, or raises with the host's errors."""
    import uuid

    import execution

    def run(prompt: dict) -> dict:
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise AssertionError(f"prompt invalid: {error} {node_errors}")
        executor = execution.PromptExecutor(_ServerStub(), cache_type=execution.CacheType.CLASSIC)
        executor.execute(prompt, prompt_id, {}, outputs)
        if not executor.success:
            errors = [m for m in executor.status_messages if m[0] == "execution_error"]
            raise RuntimeError(f"execution failed: {errors}")
        return executor.history_result["outputs"]
    return run
