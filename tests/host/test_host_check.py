"""The host internals we use are checked once, at load: all present on the pinned host,
the list covers every host name nodes/ uses, and a host that lacks some is refused with
one message naming each and the host's version. Guidance under a host path that
computes without gradients refuses clearly."""
import ast
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HOST_ROOTS = ("comfy", "comfy_api", "comfy_execution", "folder_paths", "server")


def host_names_used(path: Path) -> set[tuple[str, str]]:
    """(module, first attribute) of every host name a module of nodes/ uses."""
    import importlib
    tree = ast.parse(path.read_text())
    aliases, used = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in HOST_ROOTS:
            used.update((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in HOST_ROOTS:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if not isinstance(inner, ast.Name) or inner.id not in aliases:
                continue
            module = aliases[inner.id] or inner.id
            if chain[-1].startswith("__"):
                chain = chain[:-1]                 # a module's own dunder (its __name__)
            for part in chain:                  # the longest importable module prefix
                try:
                    importlib.import_module(f"{module}.{part}")
                    module = f"{module}.{part}"
                except ImportError:
                    used.add((module, part))
                    break
    return used


def test_the_pinned_host_has_everything(host):
    from comfyui_maskattn.nodes import host_check
    assert host_check.missing() == []
    host_check.check_host()


def test_the_list_covers_every_host_name_nodes_uses(host):
    from comfyui_maskattn.nodes.host_check import REQUIRED
    listed = {(module, path.split(".")[0]) for module, path, _ in REQUIRED}
    modules_only = {"comfy_api.latest"}          # `from comfy_api.latest import io`: io's members are listed
    for path in sorted((REPO / "nodes").glob("*.py")):
        unlisted = {u for u in host_names_used(path) if u not in listed and u[0] not in modules_only}
        assert not unlisted, (path.name, sorted(unlisted))


def test_a_host_that_lacks_internals_is_refused_with_one_message(host):
    from comfyui_maskattn.nodes import host_check
    required = (*host_check.REQUIRED, ("comfy.patcher_extension", "WrappersMP.NOT_IN_ANY_HOST", "a future node"),
                ("comfy.not_a_module", "thing", "another"))
    arguments = (("comfy.sample", "prepare_noise", "not_an_argument", "a future option"),)
    with pytest.raises(host_check.HostTooOld) as refused:
        host_check.check_host(required, arguments)
    message = str(refused.value)
    import comfyui_version
    assert f"version {comfyui_version.__version__}" in message
    assert "comfy.patcher_extension.WrappersMP.NOT_IN_ANY_HOST (a future node)" in message
    assert "comfy.not_a_module.thing (another)" in message
    assert "comfy.sample.prepare_noise(..., not_an_argument=) (a future option)" in message
    assert message.count("MaskAttn cannot run") == 1


def test_guidance_refuses_a_pass_without_gradients(host, nodes_regions, tiny_models, sample):
    """As the host's multi-GPU cond batching does: calc_cond_batch under torch.no_grad()."""
    import comfy.patcher_extension
    model, clip, _ = tiny_models
    with torch.inference_mode():
        _, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, "a red circle").args
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red", 1.0, 0, 0, 64, 128, 128, 128).args[0]
    guided = nodes_regions.MaskAttnRegionGuidance.execute(model, regions, "guidance", 0.08, 0.5, 0.3, 0.0, 0.3,
                                                          "all").args[0].clone()

    def without_grad(executor, *args, **kwargs):
        with torch.no_grad():
            return executor(*args, **kwargs)

    guided.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "no_grad", without_grad)
    with pytest.raises(RuntimeError, match="Region Mask Guidance: the host ran the guidance pass without gradients"):
        sample(guided, steps=2)


def test_host_attention_without_transformer_options(patching, monkeypatch):
    """Hosts before 0.3.60 have no transformer_options on optimized_attention: our
    unpatched calls leave it out there, and pass it where the host takes it."""
    import comfy.ldm.modules.attention as host_attention
    real = host_attention.optimized_attention
    calls = []

    def before_0_3_60(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
        calls.append("old")
        return real(q, k, v, heads, mask=mask, attn_precision=attn_precision)

    q, k = torch.randn(2, 16, 32), torch.randn(2, 77, 32)
    options = {"n_heads": 2, "attn_precision": None}
    expected = patching.host_attention_op(q, k, k, options)
    monkeypatch.setattr(host_attention, "optimized_attention", before_0_3_60)
    assert torch.equal(patching.host_attention_op(q, k, k, options), expected) and calls == ["old"]
