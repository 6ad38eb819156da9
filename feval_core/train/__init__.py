"""Training F-Eval on opinion scores.

* :mod:`.config` — :class:`TrainConfig` (``train_config.json``), light: ``feval train --help`` reads it;
* :mod:`.data` — manifest rows -> (image, dimension) examples, the face cache, batches;
* :mod:`.steps` — losses, schedules and learning rates, experts under gradient checkpointing;
* :mod:`.state` — resumable state (safetensors and JSON only);
* :mod:`.loop` — :func:`train`: the accelerate loop, validation, the final checkpoint.

Imports :mod:`feval_core.model`, :mod:`feval_core.faces`, :mod:`feval_core.data`, :mod:`feval_core.evaluate`,
:mod:`feval_core.scoring`, :mod:`feval_core.inputs` and the base modules.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "train": "loop", "TrainResult": "loop", "LOG_NAME": "loop", "enable_gradient_checkpointing": "steps",
    "TrainStep": "steps", "expert_hooks": "steps", "level_targets": "steps", "lr_factor": "steps",
    "stage_weights": "steps", "TrainConfig": "config", "DEFAULT_SCHEDULE": "config", "LOSSES": "config",
    "LR_SCHEDULES": "config", "PRECISIONS": "config", "SCHEDULES": "config", "SPLIT_BY": "config",
    "TRAIN_CONFIG_NAME": "config", "Collator": "data", "EpochSampler": "data", "Example": "data", "FaceCache": "data",
    "RowDataset": "data", "eval_prompt": "data", "expand_rows": "data", "FACE_CACHE_NAME": "data",
    "SKIPPED_NAME": "data", "SPLITS_DIR": "data", "STATE_DIR": "state",
})
