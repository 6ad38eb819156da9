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


# Why a dimension has no score for an image (``ScoreResult.missing[i][dim]``): one code per case, so that the
# caller's fault (not asked, no input) is told apart from the generator's (no face where a reference asks for one).
NOT_ASKED = "not asked"  # the caller did not ask for it (dims, weight 0), or the model does not score it
NO_PROMPT = "no prompt"  # correspondence without a generation prompt
NO_REFERENCE = "no reference"  # identity without a reference image
REFERENCE_UNUSABLE = "reference unusable"  # the reference could not be read
NO_FACE_IN_REFERENCE = "no face in the reference"  # the reference holds no face: the caller's input is wrong
NO_FACE = "no face in the image"  # a usable reference, no face in the image: the generator failed
NO_FACE_MODEL = "no face model"  # identity needs the insightface pack; none is loaded
LQ_UNUSABLE = "low-quality input unusable"  # a restoration's low-quality input could not be read
IMAGE_ERROR = "image unreadable"  # the image itself could not be read (see the error row)
PREFILTERED = "skipped by the pre-filter"  # the landmark pre-filter scored the face under the caller's threshold
MISSING_REASONS: tuple[str, ...] = (NOT_ASKED, NO_PROMPT, NO_REFERENCE, REFERENCE_UNUSABLE, NO_FACE_IN_REFERENCE,
                                    NO_FACE, NO_FACE_MODEL, LQ_UNUSABLE, IMAGE_ERROR, PREFILTERED)
FAILED: frozenset[str] = frozenset({NO_FACE, PREFILTERED})
"""Reasons that are the generated image's failure, not a missing input: such a dimension scores 0 in rewards, totals,
filters and picks (:func:`feval_core.scoring.result.judged_scores`), never left out of the mean. A face the
pre-filter skipped failed the caller's own quick check, so it is never kept or picked over a judged face."""


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
