"""Host adapters: V3 node schemas whose ``execute`` stays thin and calls ``patching``.

Registration only; one module per node family. Import this package relatively
(``from .nodes import ...``): ComfyUI has a top-level module named ``nodes``.
"""
from comfy_api.latest import ComfyExtension, io

from .model_folders import register_heads_folder
from .nodes_demo import MaskAttnLoadDemoModel
from .nodes_gating import MaskAttnApplyMaskedCrossAttention, MaskAttnLoadHeads
from .nodes_regions import MaskAttnBindRegion, MaskAttnEncodeRegionPrompt, MaskAttnRegionGuidance
from .nodes_visualize import MaskAttnVisualizeGates

register_heads_folder()

NODE_LIST: list[type[io.ComfyNode]] = [
    MaskAttnLoadHeads,
    MaskAttnApplyMaskedCrossAttention,
    MaskAttnEncodeRegionPrompt,
    MaskAttnBindRegion,
    MaskAttnRegionGuidance,
    MaskAttnVisualizeGates,
    MaskAttnLoadDemoModel,
]


class MaskAttnExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODE_LIST
