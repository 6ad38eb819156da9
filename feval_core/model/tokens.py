"""What feval needs from a backbone's tokenizer, whatever its kind (byte-level BPE, SentencePiece, ...).

* :func:`rating_token_ids` — the token id of each rating word as the model meets it: the first token after an
  answer prefix (``"The quality of the image is"``), checked the same for every prefix and distinct per word.
* :func:`escape_special` — user text (generation prompts, free-text questions) made plain text: every special or
  added token string of the tokenizer (and the face token) is broken by a WORD JOINER, so neither the tokenizer
  nor a processor's string search (LLaVA expands ``<image>`` by searching the text) reads it as a token.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

from ..dimensions import ANSWER_PREFIX
from ..errors import CheckpointError

FACE_TOKEN = "<|feval_face|>"
"""Reserved placeholder token; its input embeddings are replaced by projected face vectors."""

WORD_JOINER = "\u2060"
"""Inserted after the first character of a special token string found in user text (invisible, not a space)."""

_DIMENSIONS_FILE = "feval_core/dimensions.py"


def _name(tokenizer: Any) -> str:
    path = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}" + (f" ({path})" if path else "")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def word_after_prefix(tokenizer: Any, prefix: str, word: str) -> int:
    """The id of the first token after ``prefix`` in ``prefix + " " + word`` (how the model meets ``word``).

    Raises :class:`CheckpointError` when the tokenizer merges the word into the prefix (the prefix's ids are
    not a prefix of the longer text's ids) or produces no token for the word.
    """
    head = _ids(tokenizer, prefix)
    full = _ids(tokenizer, f"{prefix} {word}")
    if full[: len(head)] != head:
        raise CheckpointError(
            f"the tokenizer {_name(tokenizer)} merges the rating word {word!r} into the answer prefix {prefix!r} "
            f"(ids of the prefix {head} are not the start of the ids of {prefix + ' ' + word!r}: {full}), so the "
            "word has no token of its own where the score is read. Use a backbone whose tokenizer keeps words "
            f"apart at spaces, or change ANSWER_PREFIX / LEVEL_WORDS in {_DIMENSIONS_FILE}."
        )
    if len(full) == len(head):
        raise CheckpointError(
            f"the tokenizer {_name(tokenizer)} gives the rating word {word!r} no token after {prefix!r}; "
            f"use a tokenizer that can spell it, or change LEVEL_WORDS in {_DIMENSIONS_FILE}."
        )
    return full[len(head)]


def rating_token_ids(tokenizer: Any, words: Sequence[str], *,
                     prefixes: Sequence[str] = tuple(ANSWER_PREFIX.values())) -> list[int]:
    """The id of each rating word as the token right after every answer prefix (one id per word).

    The id must be the same after every prefix, and no two words may share one; otherwise
    :class:`CheckpointError` says which words and what to do.
    """
    if not prefixes:
        raise ValueError("rating_token_ids needs at least one answer prefix")
    ids: list[int] = []
    for word in words:
        per_prefix = {p: word_after_prefix(tokenizer, p, word) for p in prefixes}
        if len(set(per_prefix.values())) > 1:
            seen = ", ".join(f"{p!r} -> {i}" for p, i in per_prefix.items())
            raise CheckpointError(
                f"the tokenizer {_name(tokenizer)} gives the rating word {word!r} different tokens after different "
                f"answer prefixes ({seen}); the level head needs one id per word. Use another tokenizer, or make "
                f"the prefixes end alike in ANSWER_PREFIX ({_DIMENSIONS_FILE})."
            )
        ids.append(next(iter(per_prefix.values())))
    by_id: dict[int, list[str]] = {}
    for word, i in zip(words, ids):
        by_id.setdefault(i, []).append(word)
    clashes = {i: ws for i, ws in by_id.items() if len(ws) > 1}
    if clashes:
        what = "; ".join(f"{_join(ws)} all start with token {i} ({_piece(tokenizer, i)!r})"
                         for i, ws in clashes.items())
        raise CheckpointError(
            f"the tokenizer {_name(tokenizer)} cannot tell rating words apart after the answer prefix: {what}. "
            "Use a backbone whose tokenizer's vocabulary keeps the five rating words apart, or change LEVEL_WORDS "
            f"in {_DIMENSIONS_FILE} to words whose first tokens differ."
        )
    return ids


def _join(words: Sequence[str]) -> str:
    quoted = [repr(w) for w in words]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _piece(tokenizer: Any, token_id: int) -> str:
    try:
        return str(tokenizer.convert_ids_to_tokens(token_id))
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


# tokenizer -> (its size when the list was made, strings to escape longest first, their regex)
_SPECIALS: weakref.WeakKeyDictionary[Any, tuple[int, tuple[str, ...], re.Pattern[str]]] = weakref.WeakKeyDictionary()


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every special or added token string of ``tokenizer`` plus :data:`FACE_TOKEN`, longest first.

    Left out: strings of one character (a joiner cannot break them), white space only (ordinary text) and
    strings holding a joiner already.
    """
    return _special_entry(tokenizer)[1]


def _special_entry(tokenizer: Any) -> tuple[int, tuple[str, ...], re.Pattern[str]]:
    size = len(tokenizer)
    try:
        entry = _SPECIALS.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        entry = None
    if entry is not None and entry[0] == size:
        return entry
    found = {FACE_TOKEN, *map(str, getattr(tokenizer, "all_special_tokens", ()) or ())}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(str(getattr(t, "content", t)) for t in decoder.values())
    kept = (s for s in found if len(s) > 1 and s.strip() and WORD_JOINER not in s)
    strings = tuple(sorted(kept, key=lambda s: (-len(s), s)))
    entry = (size, strings, re.compile("|".join(map(re.escape, strings))))
    try:
        _SPECIALS[tokenizer] = entry
    except TypeError:
        pass
    return entry


def escape_special(text: str, tokenizer: Any) -> str:
    """``text`` with every special/added token string of ``tokenizer`` (and the face token) broken by a
    :data:`WORD_JOINER` after its first character, so that it is read as plain text.

    Longest strings first; text without any of them comes back unchanged (the same object).
    """
    pattern = _special_entry(tokenizer)[2]
    while pattern.search(text) is not None:  # again: breaking one string can uncover an overlapping one
        text = pattern.sub(lambda m: m.group()[0] + WORD_JOINER + m.group()[1:], text)
    return text
