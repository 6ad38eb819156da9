"""What users pass, turned into images; the window that prepares them ahead of the model; results files.

* :mod:`.images` — paths, folders, PIL, numpy, torch -> :class:`ImageItem` s; prompts and references lined
  up with the images (and the public names of the two below);
* :mod:`.decode` — one image (file, PIL) -> RGB ``PIL.Image``: formats, modes, size limits, aspect padding;
* :mod:`.arrays` — numpy arrays and torch tensors -> RGB: layouts, dtypes, value ranges;
* :mod:`.prefetch` — worker threads that decode images (and detect faces) ahead of the model, bounded;
* :mod:`.results` — JSON Lines results that survive a killed run and resume.

Lowest room: imports only :mod:`feval_core.errors` and :mod:`feval_core.dimensions`.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ImageItem": "images", "expand_inputs": "images", "load_image": "images", "pad_to_aspect": "images",
    "broadcast": "images", "IMAGE_EXTENSIONS": "images",
    "Prefetcher": "prefetch", "ResultsWriter": "results", "read_results": "results",
})
