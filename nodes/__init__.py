"""Host adapters: V3 node schemas whose ``execute`` stays thin and calls ``patching``.

Registration only; one module per node family. Import this package relatively
(``from .nodes import ...``): ComfyUI has a top-level module named ``nodes``.
"""
from .host_check import check_host

check_host()      # one clear message on a host that lacks what we use, before anything else

from comfy_api.latest import ComfyExtension, io  # noqa: E402

from .model_folders import register_heads_folder  # noqa: E402
from .nodes_demo import MaskAttnLoadDemoModel  # noqa: E402
from .nodes_gating import MaskAttnApplyMaskedCrossAttention, MaskAttnLoadHeads  # noqa: E402
from .nodes_regions import MaskAttnBindRegion, MaskAttnEncodeRegionPrompt, MaskAttnRegionGuidance  # noqa: E402
from .nodes_training import MaskAttnLoadTrainingSet, MaskAttnTrainHeads  # noqa: E402
from .nodes_visualize import MaskAttnVisualizeGates  # noqa: E402

register_heads_folder()

NODE_LIST: list[type[io.ComfyNode]] = [
    MaskAttnLoadHeads,
    MaskAttnApplyMaskedCrossAttention,
    MaskAttnEncodeRegionPrompt,
    MaskAttnBindRegion,
    MaskAttnRegionGuidance,
    MaskAttnVisualizeGates,
    MaskAttnLoadTrainingSet,
    MaskAttnTrainHeads,
    MaskAttnLoadDemoModel,
]


class MaskAttnExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODE_LIST
