"""Opinion-score data: manifests (JSON Lines), the FaceQ importer, reproducible splits.

* :mod:`.manifest` — :class:`ManifestRow`, reading (validated, line by line) and writing manifests;
* :mod:`.faceq` — a FaceQ download (``images/`` + ``MOSs/``) -> a manifest;
* :mod:`.splits` — train/val/test splits that keep generators (or images) whole.

Imports only :mod:`feval_core.inputs` and the base modules.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ManifestRow": "manifest", "read_manifest": "manifest", "write_manifest": "manifest",
    "reference_of": "manifest", "import_faceq": "faceq", "split_rows": "splits", "write_splits": "splits",
})
