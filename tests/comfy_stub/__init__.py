"""Run the node pack without ComfyUI: stub modules (``modules/``) and a loader that imports the pack as
ComfyUI does (the repository folder as a package, then ``comfy_entrypoint``).

The stubs keep the signatures and the behaviour node packs rely on (see each module's docstring); the
real ComfyUI is not on PyPI, so CI cannot install it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

STUB_MODULES = Path(__file__).resolve().parent / "modules"
PACK_ROOT = Path(__file__).resolve().parents[2]


def install(base: str | Path) -> ModuleType:
    """Put the stub modules first on ``sys.path`` and point ``folder_paths`` at ``base``; returns folder_paths."""
    if str(STUB_MODULES) not in sys.path:
        sys.path.insert(0, str(STUB_MODULES))
    import folder_paths

    folder_paths.set_base(str(base))
    return folder_paths


def load_pack(name: str = "feval_pack") -> ModuleType:
    """Import the repository folder as a package named ``name``, the way ComfyUI loads a custom node folder."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def node_classes(pack: ModuleType) -> dict[str, Any]:
    """``{node_id: class}`` as ComfyUI registers them: entry point, extension, node list, schemas."""
    from comfy_api.latest import ComfyExtension

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    asyncio.run(extension.on_load())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def widget_spec(cls: Any) -> dict[str, Any]:
    """A node's inputs and outputs in the form the workflow checks use (see ``core_nodes.py``)."""
    schema = cls.GET_SCHEMA()
    inputs = []
    for inp in schema.inputs or []:
        opts = {k: v for k, v in inp.as_dict().items() if k in ("min", "max", "options", "control_after_generate",
                                                              "image_upload", "forceInput", "default")}
        inputs.append({"name": inp.id, "type": inp.get_io_type(), "optional": bool(inp.optional), **opts})
    outputs = [{"name": o.display_name or o.io_type, "type": o.get_io_type()} for o in schema.outputs or []]
    return {"inputs": inputs, "outputs": outputs}
