"""The four F-Eval dimensions, their evaluation prompts and the rating words of the level (Q-Align) head."""

from __future__ import annotations

DIMENSIONS: tuple[str, ...] = ("quality", "authenticity", "identity", "correspondence")
"""Score columns, in this order everywhere (``ScoreResult.scores[:, i]``)."""

DIM_INDEX: dict[str, int] = {d: i for i, d in enumerate(DIMENSIONS)}

# Rating words from best to worst, and the value each stands for (Q-Align recipe, x100 for the MOS scale).
LEVEL_WORDS: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
LEVEL_VALUES: tuple[float, ...] = (100.0, 75.0, 50.0, 25.0, 0.0)

# The paper's evaluation prompts. ``{prompt}`` is the generation / customization prompt.
EVAL_PROMPTS: dict[str, str] = {
    "quality": "Please give me the quality score.",
    "authenticity": "Please give me the authenticity score.",
    "identity": "Given the reference face image, how would you rate the identity fidelity?",
    "correspondence": 'Given the prompt "{prompt}", how would you rate the correspondence?',
}

# What the assistant starts to say; the next token is a rating word (level head) and the hidden
# state at the last position feeds the regression head.
ANSWER_PREFIX: dict[str, str] = {
    "quality": "The quality of the image is",
    "authenticity": "The authenticity of the image is",
    "identity": "The identity fidelity of the image is",
    "correspondence": "The correspondence of the image is",
}

# Which inputs a dimension needs besides the image.
NEEDS_PROMPT = frozenset({"correspondence"})
NEEDS_REF = frozenset({"identity"})


def unmet_need(dim: str, *, has_prompt: bool, has_ref: bool) -> str | None:
    """What ``dim`` lacks to be scored (its score is NaN without it), or None: one rule for engine and nodes."""
    if dim in NEEDS_PROMPT and not has_prompt:
        return "needs the generation prompt"
    if dim in NEEDS_REF and not has_ref:
        return "needs a reference face image"
    return None


def parse_dims(dims: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Normalise a user's dimension selection (names, comma-separated string, or None for all)."""
    if dims is None:
        return DIMENSIONS
    if isinstance(dims, str):
        dims = [d.strip() for d in dims.split(",") if d.strip()]
    aliases = {"id": "identity", "id_fidelity": "identity", "identity_fidelity": "identity",
               "alignment": "correspondence", "prompt": "correspondence"}
    out: list[str] = []
    for d in dims:
        name = aliases.get(d.lower(), d.lower())
        if name not in DIM_INDEX:
            raise ValueError(f"unknown dimension {d!r}; choose from {', '.join(DIMENSIONS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no dimension selected; choose from {', '.join(DIMENSIONS)}")
    return tuple(sorted(out, key=DIM_INDEX.__getitem__))
