"""MaskAttn for ComfyUI: region-level control of SDXL cross-attention.

The host finds ``comfy_entrypoint`` (V3 node API). The node modules import ComfyUI, so
they are imported only when the host asks for them: ``maskattn_ops`` stays importable
(pure torch) without the host. ``WEB_DIRECTORY`` is the frontend extension that greys
out the widgets a node's current choices leave unused (web/maskattn_widgets.js).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import MaskAttnExtension

    return MaskAttnExtension()
