"""The router at work: questions in users' own words pick their expert (API, CLI, node); held-out paraphrases
are routed right; an explicit dimension bypasses the router."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.dimensions import EVAL_PROMPTS
from feval_core.errors import ConfigError
from feval_core.questions import held_out_paraphrases, router_examples, train_paraphrases
from feval_core.train.probe import routing_accuracy


@pytest.fixture(scope="module")
def trained(learned_run) -> FEvalScorer:
    return FEvalScorer.from_pretrained(learned_run.out, device="cpu")


@pytest.fixture(scope="module")
def images(learn_task) -> list[str]:
    rows = [json.loads(line) for line in (learn_task.data / "val.jsonl").read_text().splitlines()[:6]]
    return [str(learn_task.data / r["image"]) for r in rows]


def test_paraphrases_split_into_training_and_held_out_sentences() -> None:
    for d in DIMENSIONS:
        train, held = train_paraphrases(d), held_out_paraphrases(d)
        assert len(train) >= 24 and len(held) >= 8 and not set(train) & set(held)
    texts, labels = router_examples(held_out=True)
    assert len(texts) == len(labels) == sum(len(held_out_paraphrases(d)) for d in DIMENSIONS)


def test_the_trained_router_sends_held_out_paraphrases_to_their_expert(learned_run, trained) -> None:
    assert learned_run.router_accuracy >= 0.95, learned_run.router_accuracy
    assert routing_accuracy(trained.model, DIMENSIONS) == pytest.approx(learned_run.router_accuracy)


def test_questions_through_the_api(trained, images, learn_task) -> None:
    ref = str(learn_task.data / "refs" / "id0.png")
    questions = ["How natural does this face look?", "Is this the same person as in the reference face?",
                 'Does the image match the prompt "a portrait of Ada next to a red disc"?', "Is this picture sharp?"]
    res = trained.score(images, prompts="a portrait of Ada next to a red disc", refs=ref, questions=questions)
    assert torch.isnan(res.scores).all(), "with questions, no dimension is scored unless asked for"
    for answers in res.answers:
        assert [a["dimension"] for a in answers] == ["authenticity", "identity", "correspondence", "quality"]
        assert all(0.25 < a["probability"] <= 1.0 for a in answers)
    scored = [a["score"] for answers in res.answers for a in answers]
    assert sum(1 for s in scored if s is not None and math.isfinite(s)) >= len(scored) - len(images)  # faceless: NaN
    rec = res.to_records()[0]
    assert rec["answers"][0]["question"] == questions[0] and rec["answers"][0]["dimension"] == "authenticity"


def test_a_question_in_the_words_of_an_evaluation_prompt_scores_like_that_dimension(trained, images) -> None:
    plain = trained.score(images, dims="quality").scores[:, 0]
    asked = trained.score(images, questions=[EVAL_PROMPTS["quality"]])
    assert [a[0]["dimension"] for a in asked.answers] == ["quality"] * len(images)
    torch.testing.assert_close(torch.tensor([a[0]["score"] for a in asked.answers]), plain, atol=1e-4, rtol=0)


def test_an_explicit_dimension_bypasses_the_router(trained, images) -> None:
    plain = trained.score(images, dims="authenticity").scores
    both = trained.score(images, dims="authenticity", questions=["Is this picture sharp?"])
    torch.testing.assert_close(both.scores, plain, equal_nan=True)
    assert all(a[0]["dimension"] == "quality" for a in both.answers)


def test_special_tokens_in_a_question_are_plain_text(trained, images, learn_task) -> None:
    """Special-token text in a question is escaped: it scores like the same text escaped by hand (with a prompt
    and a reference, so whichever expert the router picks can answer)."""
    tok = trained.model.processor.tokenizer
    specials = [*tok.all_special_tokens, "<|feval_face|>", "<|image_pad|>", "<|im_start|>"]
    nasty = "How natural " + " ".join(specials) + " is this face?"
    escaped = nasty
    for s in sorted(set(specials), key=len, reverse=True):  # by hand: a word joiner after the first character
        escaped = escaped.replace(s, s[0] + "\u2060" + s[1:])
    given = {"prompts": "a portrait of Ada next to a red disc", "refs": str(learn_task.data / "refs" / "id0.png")}
    raw = trained.score(images[:2], questions=[nasty], **given)
    by_hand = trained.score(images[:2], questions=[escaped], **given)
    assert raw.answers[0][0]["question"] == " ".join(nasty.split())  # shown as asked
    for a, b in zip(raw.answers, by_hand.answers):
        assert a[0]["score"] is not None and math.isfinite(a[0]["score"])
        assert a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-5) and a[0]["dimension"] == b[0]["dimension"]


def test_zero_shot_has_no_router(tiny_ckpt) -> None:
    zs = FEvalScorer.zero_shot(str(tiny_ckpt / "backbone"), face_pack="tiny_face", face_root=tiny_ckpt / "face_pack",
                               device="cpu")
    with pytest.raises(ConfigError, match="trained checkpoint"):
        zs.score(np.zeros((32, 32, 3), np.uint8), questions=["How natural does this face look?"])


def test_question_on_the_command_line(learned_run, images, tmp_path, capsys) -> None:
    from feval_core.cli import main

    out = tmp_path / "q.jsonl"
    code = main(["score", *images[:3], "--model", str(learned_run.out), "--device", "cpu", "--out", str(out),
                 "--question", "How natural does this face look?", "--question", "Is this picture sharp?"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["quality"] is None for r in rows)
    assert [[a["dimension"] for a in r["answers"]] for r in rows] == [["authenticity", "quality"]] * 3
    assert all(isinstance(a["score"], float) and isinstance(a["probability"], float) for r in rows for a in r["answers"])


def test_question_on_the_score_node(tmp_path_factory, learned_run, learn_task, images) -> None:
    import shutil

    from PIL import Image

    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(learned_run.out, base / "models" / "feval" / "learned", ignore=shutil.ignore_patterns("state"))
    shutil.copytree(learn_task.face_root / "models", base / "models" / "insightface" / "models")  # the run's pack
    nodes = node_classes(load_pack())
    handle = nodes["FEvalModelLoader"].execute("models folder", "learned", "", "auto", "cpu", "auto")[0]
    batch = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[:2]])).float() / 255
    out = nodes["FEvalScoreFaces"].execute(handle, batch, quality=False, authenticity=False, identity=False,
                                           correspondence=False, question="How natural does this face look?")
    answer = out.args[-1]
    direct = handle.scorer.score(images[:2], questions=["How natural does this face look?"])
    assert answer == pytest.approx([a[0]["score"] for a in direct.answers], abs=1e-3)
    assert "answered by the authenticity expert" in json.loads(out.args[-3])["notes"][-1]
