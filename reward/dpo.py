"""Diffusion-DPO preference pairs from N candidates per prompt: best vs worst by F-Eval reward.

The folder written is a Hugging Face data set that ``datasets.load_dataset(folder, split="train")`` reads,
with the columns diffusers' ``train_diffusion_dpo.py`` uses — ``jpg_0``, ``jpg_1`` (encoded image bytes),
``label_0`` (1.0 when ``jpg_0`` is preferred, else 0.0), ``caption`` — plus ``reward_0``, ``reward_1`` and
``seed_0``, ``seed_1`` (-1 for given images) so every pair can be audited and regenerated. The winner's
side is drawn at random (seeded). A prompt whose best and worst differ by less than ``margin`` gives no
pair. Pairs are streamed to Parquet, so memory does not grow with the number of prompts.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feval_core.inputs.images import load_image

from .best_of_n import candidate_seeds, generate_candidates
from .core import Weights, feval_reward, get_scorer, resolve_weights

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.scorer import FEvalScorer

logger = logging.getLogger(__name__)

DATA_FILE = "data/train.parquet"
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass
class DPOPairs:
    """What :func:`build_dpo_pairs` wrote."""

    path: Path  # the data set folder (load it with datasets.load_dataset(str(path), split="train"))
    num_pairs: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (prompt, why no pair)


def build_dpo_pairs(
    source: Any,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    n: int = 4,
    refs: Any = None,
    margin: float = 5.0,
    seed: int = 0,
    weights: Weights = None,
    scorer: FEvalScorer | str | Path | None = None,
    batch_size: int = 4,
    image_format: str = "png",
    generator_device: str = "cpu",
    faces_required: bool = True,
    device: str | None = None,
    **pipe_kwargs: Any,
) -> DPOPairs:
    """Write a Diffusion-DPO data set to ``out_dir``: for each prompt, its best and worst of ``n`` candidates.

    ``source``: a diffusers text-to-image pipeline (``n`` candidates per prompt are generated with one
    seeded generator each: prompt ``p``'s candidate ``i`` uses seed ``seed + p * n + i``; ``pipe_kwargs``
    go to every call), or already generated candidates: one list of images per prompt (paths, PIL,
    arrays or tensors). ``refs``: reference faces, one per prompt or one for all. ``margin``: the smallest
    reward gap (0..100 scale) that makes a pair. Candidates with no scored dimension are left out; a candidate
    without a face gets the floor (0) unless ``faces_required=False`` (:func:`~reward.core.feval_reward`'s rule).
    """
    prompts = list(prompts)
    fmt = IMAGE_FORMATS.get(image_format.lower())
    if fmt is None:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    generate = callable(source)
    if generate:
        if n < 2:
            raise ValueError(f"a pair needs n >= 2 candidates per prompt, got n={n}")
        pipe_kwargs.setdefault("output_type", "pil")
    else:
        source = list(source)
        if len(source) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(source)} candidate lists; give one list per prompt")
        if pipe_kwargs:
            raise ValueError(f"pipeline arguments {sorted(pipe_kwargs)} given, but source holds images, not a pipeline")
    ref_list = list(refs) if isinstance(refs, (list, tuple)) else [refs] * len(prompts)
    if len(ref_list) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(ref_list)} refs; pass one ref per prompt or one for all")
    w = resolve_weights(weights)
    sc = get_scorer(scorer, device=device)
    sc_args = {"scorer": sc, "faces_required": faces_required}
    out = Path(out_dir)
    (out / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    result = DPOPairs(path=out, num_pairs=0)
    writer = _PairWriter(out / DATA_FILE)
    try:
        for p, prompt in enumerate(prompts):
            if generate:
                seeds = candidate_seeds(seed + p * n, n)
                images: list[Any] = []
                for _, batch in generate_candidates(source, prompt, seeds, batch_size=batch_size,
                                                    generator_device=generator_device, **pipe_kwargs):
                    images.extend(batch)
            else:
                images = list(source[p])
                seeds = [-1] * len(images)
            why = _add_pair(writer, rng, prompt, images, seeds, ref_list[p], w, sc_args, margin, batch_size, fmt)
            if why:
                result.skipped.append((prompt, why))
                logger.info("no pair for prompt %d (%r): %s", p, prompt, why)
            else:
                result.num_pairs += 1
    finally:
        writer.close()
    _write_card(out, result, margin=margin, weights=w, image_format=fmt, n=n if generate else None, seed=seed)
    if result.num_pairs == 0:
        logger.warning("no prompt gave a pair (margin %.3g); %d skipped", margin, len(result.skipped))
    return result


def _add_pair(writer: _PairWriter, rng: random.Random, prompt: str, images: list[Any], seeds: list[int], ref: Any,
              weights: dict[str, float], scorer: dict[str, Any], margin: float, batch_size: int, fmt: str
              ) -> str | None:
    """Score one prompt's candidates and write its pair; return why not, or None when written."""
    if len(images) < 2:
        return f"{len(images)} candidate(s); a pair needs 2"
    pil = [load_image(im) for im in images]  # what is scored is exactly what is stored
    rewards = feval_reward(pil, prompt, ref, weights, nan_reward=float("nan"), batch_size=batch_size, **scorer)
    scored = [(float(r), i) for i, r in enumerate(rewards.tolist()) if not math.isnan(r)]
    if len(scored) < 2:
        return f"only {len(scored)} candidate(s) could be scored on the weighted dimensions"
    best = max(scored, key=lambda t: (t[0], -t[1]))
    worst = min(scored, key=lambda t: (t[0], t[1]))
    gap = best[0] - worst[0]
    if gap < margin or best[1] == worst[1]:
        return f"best and worst differ by {gap:.3g} < margin {margin:.3g}"
    first, second = (best, worst) if rng.random() < 0.5 else (worst, best)
    writer.write({
        "jpg_0": _encode(pil[first[1]], fmt), "jpg_1": _encode(pil[second[1]], fmt),
        "label_0": 1.0 if first is best else 0.0, "caption": prompt,
        "reward_0": first[0], "reward_1": second[0], "seed_0": int(seeds[first[1]]), "seed_1": int(seeds[second[1]]),
    })
    return None


def _encode(img: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


class _PairWriter:
    """Appends rows to one Parquet file, a row group every ``flush_every`` rows; ``close()`` when done."""

    def __init__(self, path: Path, flush_every: int = 64) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush_every = flush_every
        self.schema = pa.schema([("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()),
                                 ("caption", pa.string()), ("reward_0", pa.float64()), ("reward_1", pa.float64()),
                                 ("seed_0", pa.int64()), ("seed_1", pa.int64())])
        self.rows: list[dict[str, Any]] = []
        self._writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._writer.close()


def _write_card(out: Path, result: DPOPairs, **settings: Any) -> None:
    """A dataset card whose YAML header points ``load_dataset`` at the Parquet file."""
    info = {"num_pairs": result.num_pairs, "skipped_prompts": len(result.skipped), **settings}
    text = (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        f"    path: {DATA_FILE}\n---\n\n# F-Eval preference pairs (Diffusion-DPO)\n\n"
        "Columns: `jpg_0`, `jpg_1` (encoded images), `label_0` (1.0 when `jpg_0` is preferred), `caption`, "
        "`reward_0`, `reward_1` (weighted F-Eval reward, 0-100), `seed_0`, `seed_1` (-1: given image).\n\n"
        f"```json\n{json.dumps(info, indent=2, sort_keys=True)}\n```\n"
    )
    (out / "README.md").write_text(text, encoding="utf-8")
