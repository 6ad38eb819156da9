"""Real tokenizers: rating words read where the model meets them, and user text that never becomes special tokens."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from feval_core.dimensions import ANSWER_PREFIX, DIMENSIONS, LEVEL_WORDS
from feval_core.errors import CheckpointError
from feval_core.model.backbone import FACE_TOKEN, rating_token_ids
from feval_core.model.tokens import escape_special, special_strings
from feval_core.testing.tiny import build_sentencepiece_tokenizer, build_tokenizer

FAMILIES = ["qwen2_5_vl", "internvl", "llava"]
WJ = "\u2060"
PREFIXES = tuple(ANSWER_PREFIX.values())

_TOKENIZERS: dict[str, Any] = {}


def tokenizer(kind: str) -> Any:
    """Tokenizers built once per module: the byte-level tiny ones per family, SentencePiece ones."""
    if kind not in _TOKENIZERS:
        if kind == "sentencepiece":
            _TOKENIZERS[kind] = build_sentencepiece_tokenizer("llava")
        elif kind == "sentencepiece_dummy_prefix":
            _TOKENIZERS[kind] = build_sentencepiece_tokenizer("llava", dummy_prefix=True)
        else:
            _TOKENIZERS[kind] = build_tokenizer(kind)
    return _TOKENIZERS[kind]


def ids_of(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def old_rule(tok: Any, word: str) -> int:
    """What feval used before: the first token of " word", out of context."""
    return ids_of(tok, " " + word)[0]


def specials_of(tok: Any) -> list[str]:
    """Every special or added token string of ``tok``, written out in the test."""
    found = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values()}
    return sorted(found)


def special_ids_of(tok: Any) -> set[int]:
    return set(tok.all_special_ids) | set(tok.added_tokens_decoder)


# -- (a) rating words are the token after the answer prefix --------------------------------------------------


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "internvl", "llava", "sentencepiece", "sentencepiece_dummy_prefix"])
def test_rating_ids_are_the_token_after_every_answer_prefix(kind):
    tok = tokenizer(kind)
    ids = rating_token_ids(tok, LEVEL_WORDS)
    assert len(ids) == 5 and len(set(ids)) == 5
    for prefix in PREFIXES:
        head = ids_of(tok, prefix)
        for word, token_id in zip(LEVEL_WORDS, ids):
            full = ids_of(tok, f"{prefix} {word}")
            assert full[: len(head)] == head
            assert full[len(head)] == token_id, (kind, prefix, word)


def test_sentencepiece_words_are_metaspace_pieces():
    tok = tokenizer("sentencepiece")
    ids = rating_token_ids(tok, LEVEL_WORDS)
    assert tok.convert_ids_to_tokens(ids) == ["▁" + w for w in LEVEL_WORDS]
    # A Metaspace pre-tokenizer does not double the "▁" of " good": here the old out-of-context rule happens to
    # give the same ids; the in-context rule above is what holds for every tokenizer.
    assert [old_rule(tok, w) for w in LEVEL_WORDS] == ids


def test_old_rule_breaks_on_llama_style_dummy_prefix():
    """Llama-2 / LLaVA-1.5 tokenizers prepend "▁" to every text: " good" alone starts with a lone "▁" piece."""
    tok = tokenizer("sentencepiece_dummy_prefix")
    ids = rating_token_ids(tok, LEVEL_WORDS)
    assert tok.convert_ids_to_tokens(ids) == ["▁" + w for w in LEVEL_WORDS]
    old = [old_rule(tok, w) for w in LEVEL_WORDS]
    assert set(tok.convert_ids_to_tokens(old)) == {"▁"}, "the old rule read the same lone '▁' for every word"
    assert all(o != i for o, i in zip(old, ids))


def test_lmm_keeps_calling_rating_token_ids_with_two_arguments():
    tok = tokenizer("qwen2_5_vl")
    assert rating_token_ids(tok, LEVEL_WORDS) == rating_token_ids(tok, LEVEL_WORDS, prefixes=PREFIXES)
    assert rating_token_ids(tok, LEVEL_WORDS, prefixes=PREFIXES[:1]) == rating_token_ids(tok, LEVEL_WORDS)


# -- (b) tokenizers that cannot score rating words are refused -------------------------------------------------


def _assert_fix_said(message: str) -> None:
    assert "LEVEL_WORDS" in message and "keeps the five rating words apart" in message


@pytest.mark.parametrize("build", [lambda: build_sentencepiece_tokenizer("llava", vocab_size=300),
                                   lambda: build_tokenizer("qwen2_5_vl", vocab_size=259)],
                         ids=["sentencepiece_letters", "byte_level_no_merges"])
def test_tiny_vocabularies_spell_words_letter_by_letter_and_are_refused(build):
    tok = build()  # every word starts with the same space piece ("▁" or "Ġ")
    with pytest.raises(CheckpointError) as err:
        rating_token_ids(tok, LEVEL_WORDS)
    msg = str(err.value)
    assert all(repr(w) in msg for w in LEVEL_WORDS)
    _assert_fix_said(msg)


class _Rewriting:
    """A tokenizer whose ids for some texts are rewritten (``rules``: text ending -> function of the ids)."""

    def __init__(self, base: Any, rules: dict[str, Any]) -> None:
        self.base, self.rules = base, rules

    def __call__(self, text: str, **kwargs: Any) -> dict[str, list[int]]:
        ids = list(self.base(text, **kwargs)["input_ids"])
        for ending, rewrite in self.rules.items():
            if text.endswith(ending):
                ids = rewrite(ids)
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.base.convert_ids_to_tokens(i)


def test_two_colliding_words_are_named_with_the_fix():
    base = tokenizer("qwen2_5_vl")
    excellent = rating_token_ids(base, LEVEL_WORDS)[0]
    tok = _Rewriting(base, {" good": lambda ids: ids[:-1] + [excellent]})
    with pytest.raises(CheckpointError) as err:
        rating_token_ids(tok, LEVEL_WORDS)
    msg = str(err.value)
    assert "'excellent' and 'good'" in msg and "'fair'" not in msg
    _assert_fix_said(msg)


def test_a_tokenizer_that_merges_across_the_prefix_is_refused():
    base = tokenizer("llava")
    tok = _Rewriting(base, {" is good": lambda ids: ids[:-2] + [7]})  # "is" and "good" become one token
    with pytest.raises(CheckpointError) as err:
        rating_token_ids(tok, LEVEL_WORDS)
    msg = str(err.value)
    assert "'good'" in msg and repr(PREFIXES[0]) in msg and "merges" in msg and "ANSWER_PREFIX" in msg


def test_a_word_must_get_the_same_id_after_every_prefix():
    base = tokenizer("llava")
    tok = _Rewriting(base, {"correspondence of the image is bad": lambda ids: ids[:-1] + [7]})
    with pytest.raises(CheckpointError, match="'bad' different tokens after different answer prefixes"):
        rating_token_ids(tok, LEVEL_WORDS)


# -- (c) escape_special ---------------------------------------------------------------------------------------------

ORDINARY = "a photo of a smiling woman, 85mm <b>bold</b> 3 < 4 > 2 | x <|> über"


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "internvl", "llava", "sentencepiece"])
def test_escape_special_leaves_no_special_token(kind):
    tok = tokenizer(kind)
    strings = specials_of(tok) + [FACE_TOKEN]
    text = "look: " + " ".join(strings) + "".join(strings) + " " + ORDINARY
    escaped = escape_special(text, tok)
    assert escaped != text and escaped.replace(WJ, "") == text
    assert not any(s in escaped for s in strings)
    assert not set(ids_of(tok, escaped)) & special_ids_of(tok)
    assert set(ids_of(tok, text)) & special_ids_of(tok), "the unescaped text did hold special tokens"
    assert escape_special(ORDINARY, tok) is ORDINARY
    assert escape_special("", tok) == ""


def test_escape_special_sees_tokens_added_later():
    tok = build_tokenizer("llava")
    assert escape_special("a <|new_token|> b", tok) == "a <|new_token|> b"
    tok.add_special_tokens({"additional_special_tokens": ["<|new_token|>"]}, replace_extra_special_tokens=False)
    assert escape_special("a <|new_token|> b", tok) == f"a <{WJ}|new_token|> b"
    assert "<|new_token|>" in special_strings(tok)


class _FakeTokenizer:
    """Just what escape_special reads."""

    def __init__(self, strings: list[str]) -> None:
        self.all_special_tokens = strings
        self.added_tokens_decoder: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.all_special_tokens)


def test_escape_special_breaks_overlapping_strings_and_longest_first():
    tok = _FakeTokenizer(["abc", "cd", "x", "  "])  # one character and white space only: ordinary text
    assert escape_special("abcd", tok) == f"a{WJ}bc{WJ}d"
    assert escape_special("x  y", tok) == "x  y"
    tok = _FakeTokenizer(["<im>", "<im>>"])
    assert escape_special("<im>>", tok) == f"<{WJ}im>>"


# -- (d) end to end on tiny checkpoints -----------------------------------------------------------------------------

_SCORERS: dict[str, Any] = {}


def _scorer(tiny_ckpts: Any, family: str) -> Any:
    from feval_core import FEvalScorer

    if family not in _SCORERS:
        _SCORERS[family] = FEvalScorer.from_pretrained(tiny_ckpts[family], device="cpu")
    return _SCORERS[family]


def _by_hand(text: str, strings: list[str]) -> str:
    for s in sorted(strings, key=len, reverse=True):
        text = text.replace(s, s[0] + WJ + s[1:])
    return text


def _correspondence(scorer: Any, image: np.ndarray, prompt: str) -> float:
    res = scorer.score([image], prompts=prompt, dims="correspondence")
    return float(res.scores[0, DIMENSIONS.index("correspondence")])


IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_with_special_tokens_score_as_plain_text(tiny_ckpts, family):
    scorer = _scorer(tiny_ckpts, family)
    strings = specials_of(scorer.model.processor.tokenizer) + [FACE_TOKEN]
    assert FACE_TOKEN in specials_of(scorer.model.processor.tokenizer)  # the checkpoint added it
    prompt = "a woman " + " ".join(strings) + " smiling " + "".join(strings)
    raw = _correspondence(scorer, IMAGE, prompt)
    hand = _correspondence(scorer, IMAGE, _by_hand(prompt, strings))
    assert math.isfinite(raw) and math.isfinite(hand)
    assert raw == pytest.approx(hand, abs=1e-5)
    plain = _correspondence(scorer, IMAGE, "a woman smiling")
    assert math.isfinite(plain)


def test_llava_prompt_with_image_token_scores(tiny_ckpts):
    scorer = _scorer(tiny_ckpts, "llava")
    prompt = "<image> a woman in front of an <image>"
    raw = _correspondence(scorer, IMAGE, prompt)
    assert math.isfinite(raw)
    assert raw == pytest.approx(_correspondence(scorer, IMAGE, prompt.replace("<image>", f"<{WJ}image>")), abs=1e-5)
