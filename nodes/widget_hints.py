"""What the UI needs beyond a schema's plain fields: which widgets a choice leaves unused,
and the search words of newer hosts.

An input that only some choices of another widget use carries that in its definition
(``maskattn_used_when`` in /object_info); web/maskattn_widgets.js greys it out for the
other choices, and its tooltip says the same. One table per node, read by both.
"""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

USED_WHEN = "maskattn_used_when"        # {"widget": [values that use this input]}
UNUSED_WHEN_LINKED = "maskattn_unused_when_linked"   # name of an input whose link makes this one unused
_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}


def used_when(inp: io.Input, widget: str, *values: str) -> io.Input:
    """Marks ``inp`` as used only when ``widget`` holds one of ``values``; the tooltip
    says so. (Set after construction: before 0.3.6x the widget inputs take no extra_dict.)"""
    inp.extra_dict[USED_WHEN] = {widget: list(values)}
    inp.tooltip = f"{inp.tooltip} Used when {widget} is {' or '.join(values)}."
    return inp


def unused_when_linked(inp: io.Input, link: str) -> io.Input:
    """Marks ``inp`` as unused while the input ``link`` is connected; the tooltip says so."""
    inp.extra_dict[UNUSED_WHEN_LINKED] = link
    inp.tooltip = f"{inp.tooltip} Ignored while {link} is connected."
    return inp


def newer_schema_fields(**fields) -> dict:
    """The Schema fields this host knows among ``fields`` (e.g. search_aliases, read by
    newer hosts' node search; older hosts' Schema has no such field and would refuse it)."""
    return {name: value for name, value in fields.items() if name in _SCHEMA_FIELDS}
