// Greys out the widgets a node's current choices leave unused (Region Mask Guidance's
// alpha and lambda outside mode "guidance", Bind Region to Words' box while a mask is
// connected, ...), and labels widgets with their display_name (ComfyUI's frontend shows
// the input's id, e.g. "lam" for lambda). Both come from the node's own definition
// (/object_info: maskattn_used_when, maskattn_unused_when_linked, display_name;
// nodes/widget_hints.py), so this file names no node. Values are kept and saved as they
// are: only drawn greyed.
import { app } from "../../scripts/app.js";

const USED_WHEN = "maskattn_used_when";
const UNUSED_WHEN_LINKED = "maskattn_unused_when_linked";

function inputOptions(nodeData) {
  const options = {};
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[section] ?? {})) {
      if (Array.isArray(spec) && spec[1]) options[name] = spec[1];
    }
  }
  return options;
}

function label(node, options) {
  for (const widget of node.widgets ?? []) {
    const shown = options[widget.name]?.display_name;
    // only where no translation gave the widget a label of its own
    if (shown && (widget.label === undefined || widget.label === widget.name)) widget.label = shown;
  }
}

function isUnused(node, hint) {
  for (const [other, values] of Object.entries(hint[USED_WHEN] ?? {})) {
    const widget = node.widgets?.find((w) => w.name === other);
    if (widget && !values.includes(widget.value)) return true;
  }
  const link = hint[UNUSED_WHEN_LINKED];
  return Boolean(link && node.inputs?.find((i) => i.name === link)?.link != null);
}

function refresh(node, hints) {
  for (const widget of node.widgets ?? []) {
    if (hints[widget.name]) widget.disabled = isUnused(node, hints[widget.name]);
  }
  node.setDirtyCanvas?.(true, true);
}

function chain(object, method, after) {
  const original = object[method];
  object[method] = function (...args) {
    const result = original?.apply(this, args);
    after(this);
    return result;
  };
}

app.registerExtension({
  name: "maskattn.widgets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name).startsWith("MaskAttn")) return;      // our nodes only
    const options = inputOptions(nodeData);
    const hints = Object.fromEntries(Object.entries(options)
      .filter(([, o]) => o[USED_WHEN] || o[UNUSED_WHEN_LINKED]));
    const controlling = new Set(Object.values(hints).flatMap((h) => Object.keys(h[USED_WHEN] ?? {})));
    chain(nodeType.prototype, "onNodeCreated", (node) => {
      label(node, options);
      for (const widget of node.widgets ?? []) {
        if (controlling.has(widget.name)) chain(widget, "callback", () => refresh(node, hints));
      }
      refresh(node, hints);
    });
    chain(nodeType.prototype, "onConfigure", (node) => refresh(node, hints));
    chain(nodeType.prototype, "onConnectionsChange", (node) => refresh(node, hints));
  },
});
