"""UI-format workflow JSON (what the ComfyUI menu saves and opens) -> API prompt.

The frontend does this in the browser (``app.graphToPrompt``); headless runs do it here
with the host's own node definitions (``/object_info``): widget values are matched to
the widget inputs in definition order, links become ``[node_id, slot]``.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def _is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in UI_ONLY or node.get("mode", 0) == MUTED:
            continue
        if node.get("mode", 0) == BYPASSED:
            raise WorkflowError(f"node {node['id']} ({node_type}) is bypassed; headless runs do not rewire bypasses")
        if node_type not in object_info:
            raise WorkflowError(f"node {node['id']} has type {node_type!r}, which the host does not know (missing node pack?)")
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        spec_inputs = object_info[node_type]["input"]
        for section in ("required", "optional"):
            for name, spec in spec_inputs.get(section, {}).items():
                value = None
                if _is_widget(spec) and values:
                    value = values.pop(0)
                    if len(spec) > 1 and spec[1].get("control_after_generate") and values:
                        values.pop(0)     # the "fixed"/"randomize" widget that follows a seed
                if name in linked:
                    _, origin, origin_slot, *_ = linked[name]
                    inputs[name] = [str(origin), origin_slot]
                elif value is not None:
                    inputs[name] = value
        prompt[str(node["id"])] = {"class_type": node_type, "inputs": inputs,
                                   "_meta": {"title": node.get("title", node_type)}}
    return prompt
