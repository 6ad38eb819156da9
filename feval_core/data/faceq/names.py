"""What names say: name tokens, task and dimension words, column roles, and the model an image folder names."""

from __future__ import annotations

import re
from pathlib import Path

_TASK_TOKENS: dict[str, frozenset[str]] = {
    "generation": frozenset({"generation", "gen", "generated", "generate", "t2i", "txt2img", "text2image"}),
    "customization": frozenset({"customization", "customisation", "cust", "custom", "customized",
                                "customised", "personalization", "personalisation", "personalized"}),
    "restoration": frozenset({"restoration", "rest", "resto", "restored", "restore"}),
}
_TASK_PREFIXES = {"generation": ("generat",), "customization": ("customi", "personali"), "restoration": ("restor",)}

_DIM_TOKENS: dict[str, frozenset[str]] = {
    "quality": frozenset({"quality", "qual", "iqa"}),
    "authenticity": frozenset({"authenticity", "authentic", "auth", "realism", "realness", "naturalness"}),
    "identity": frozenset({"id", "identity", "idfidelity", "fidelity"}),
    "correspondence": frozenset({"correspondence", "corr", "consistency", "alignment", "align", "relevance"}),
}
_DIM_STEMS = {"quality": ("quality",), "authenticity": ("authentic",), "identity": ("identity", "fidelity"),
              "correspondence": ("correspond", "consisten", "alignment")}

# Column roles by exact (normalised) header, then by the words in it.
_EXACT_ROLES: dict[str, str] = {
    **dict.fromkeys(("image", "images", "img", "name", "filename", "file", "file_name", "image_name", "img_name",
                     "imagename", "imgname", "image_path", "img_path", "path", "image_file", "picture", "pic",
                     "image_id", "img_id", "image_filename"), "image"),
    **dict.fromkeys(("mos", "score", "scores", "mean", "mean_score", "mos_score", "rating", "avg", "average",
                     "label", "value", "mean_opinion_score"), "mos"),
    **dict.fromkeys(("model", "method", "generator", "model_name", "method_name", "algorithm", "network"),
                    "model"),
    **dict.fromkeys(("prompt", "prompts", "caption", "text", "description"), "prompt"),
    **dict.fromkeys(("ref", "reference", "ref_image", "reference_image", "ref_img", "ref_path", "ref_name",
                     "reference_face", "ref_face"), "ref"),
    **dict.fromkeys(("lq", "lq_image", "lq_img", "lq_path", "low_quality", "low_quality_image", "degraded",
                     "input"), "lq"),
    **dict.fromkeys(("task", "tasks"), "task"),
    **dict.fromkeys(("index", "idx", "no", "num", "number", "n", "count", "std", "sd", "stdev", "std_dev",
                     "variance", "var", "split", "set", "subset", "fold", "z_score", "zscore", "votes",
                     "num_ratings", "n_ratings"), "ignore"),
}
_STAT_TOKENS = frozenset({"std", "sd", "stdev", "var", "variance", "count", "ci", "zscore", "votes"})
_ID_COMPANIONS = frozenset({"mos", "score", "fidelity", "rating", "mean", "avg", "sim", "similarity"})
_GENERIC_FOLDERS = frozenset({"images", "image", "imgs", "img", "real", "synthetic", "syn", "real_world",
                              "realworld", "lq", "hq", "gt", "output", "outputs", "results", "result"})


def _tokens(name: str) -> list[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.findall(r"[a-z]+|[0-9]+", name.lower())


def _dims_of(tokens: list[str]) -> set[str]:
    joined = "".join(tokens)
    found = {d for d, words in _DIM_TOKENS.items() if words.intersection(tokens)}
    return found | {d for d, stems in _DIM_STEMS.items() if any(s in joined for s in stems)}


def _tasks_of(tokens: list[str]) -> set[str]:
    return {t for t, words in _TASK_TOKENS.items()
            if words.intersection(tokens) or any(tok.startswith(_TASK_PREFIXES[t]) for tok in tokens)}


def _column_role(header: str) -> str | None:
    """``image``, ``mos``, a dimension, ``prompt``, ``ref``, ``lq``, ``model``, ``task``, ``ignore`` or None."""
    tokens = _tokens(header)
    norm = "_".join(tokens)
    if norm in _EXACT_ROLES:
        return _EXACT_ROLES[norm]
    words = set(tokens)
    if not tokens or norm.startswith("unnamed") or words & _STAT_TOKENS:
        return "ignore"
    if "lq" in words or {"low", "quality"} <= words:
        return "lq"
    if words & {"ref", "reference"}:
        return "ref"
    if "id" in words and len(words) > 1 and not (words - {"id"}) <= _ID_COMPANIONS:
        return "image" if words & {"image", "img", "file"} else "ignore"  # an identifier, not identity
    dims = _dims_of(tokens)
    if len(dims) == 1:
        return dims.pop()
    if words & {"model", "method", "generator"}:
        return "model"
    if words & {"prompt", "caption", "text"}:
        return "prompt"
    if "task" in words:
        return "task"
    if words & {"mos", "score", "rating"}:
        return "mos"
    if words & {"image", "img", "filename", "file", "name", "path"}:
        return "image"
    return None


def _model_of(rel: Path) -> str | None:
    """The nearest folder of an image (under images/) that is not a task or a generic name."""
    for folder in reversed(rel.parent.parts):
        if folder.lower() not in _GENERIC_FOLDERS and not _tasks_of(_tokens(folder)):
            return folder
    return None
