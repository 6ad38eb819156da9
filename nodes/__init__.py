"""ComfyUI nodes of feval (V3 API): load the F-Eval model, score, filter and pick faces, ArcFace similarity.

Only ComfyUI imports this package (through the pack's ``comfy_entrypoint``). The nodes are thin shells
over ``feval_core``; when the pack was cloned into ``custom_nodes/`` without ``pip install``, the pack's
folder is appended to ``sys.path`` so that ``feval_core`` imports from it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _ensure_engine() -> None:
    try:
        import feval_core  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "feval_core":
            raise
        root = str(Path(__file__).resolve().parent.parent)
        if root not in sys.path:
            sys.path.append(root)  # appended: never shadows ComfyUI's own top-level modules


_ensure_engine()

from comfy_api.latest import ComfyExtension, io  # noqa: E402

from .fiqa import FaceUtility  # noqa: E402
from .loader import LoadFEvalModel  # noqa: E402
from .paths import register_folders  # noqa: E402
from .pick import FilterByScore, PickBestOfN  # noqa: E402
from .prefilter import FaceQuickCheck  # noqa: E402
from .score import ScoreFaces  # noqa: E402
from .similarity import FaceSimilarity  # noqa: E402
from .video import ScoreFaceVideo  # noqa: E402

NODES: list[type[io.ComfyNode]] = [LoadFEvalModel, ScoreFaces, FilterByScore, PickBestOfN, FaceSimilarity, FaceUtility,
                                   FaceQuickCheck, ScoreFaceVideo]


class FEvalExtension(ComfyExtension):
    """The feval node pack."""

    async def on_load(self) -> None:
        register_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_folders()
        return list(NODES)


__all__ = ["FEvalExtension", "NODES"]
