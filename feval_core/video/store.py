"""Where a training run's clip features live: on disk, one safetensors file per clip, read back per batch.

Before the first step every clip's frozen features (decoded key frames, temporal and portrait features, face
embeddings) are written to disk: into the run's feature cache (``<run>/feature_cache/``, kept for reruns) when the
clip has a path and the cache is on, else into a scratch folder (``<run>/feature_scratch/``, or a temporary folder
without a run folder) that is deleted when the run ends. Arrays passed through the API have no path, so they go to
the scratch folder too: nothing of a clip stays in memory after it is written. The loop then reads each batch's
files in a worker thread (:class:`~feval_core.inputs.prefetch.Prefetcher`), a couple of batches ahead, so memory
holds a few batches whatever the number of clips.

Under ``accelerate launch`` each process decodes and encodes its shard of the clips (every N-th); entries are
written atomically (a temporary file, then a rename), so processes sharing a folder never see half an entry; then
the processes exchange where each clip's file is and which clips failed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..inputs.prefetch import Prefetcher, chunked
from .cache import FeatureCache, is_entry, read_features, write_features
from .decode import load_clip
from .features import FeatureExtractor, detect_faces
from .model import VideoFeatures
from .sources import VideoInputError, VideoSource

logger = logging.getLogger(__name__)

SCRATCH_DIR = "feature_scratch"
LOAD_AHEAD = 2
"""Batches read ahead of the one being trained on."""


@dataclass
class StoredClips:
    """The readable clips of a run: each one's file, name and MOS (small: no features)."""

    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    mos: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> VideoFeatures:
        """The features of clip ``i``, read from its file."""
        try:
            return read_features(self.paths[i], self.names[i])
        except Exception as exc:  # noqa: BLE001 - OSError, or safetensors' own error for a damaged file
            raise ConfigError(f"the features of {self.names[i]} ({self.paths[i]}) cannot be read ({exc}); they "
                              "were written before the first step: was the folder deleted or the disk full? "
                              "Continue the run with --resume (a missing entry is computed again)") from exc

    def batches(self, index_lists: Iterable[Sequence[int]], *, workers: int = 1) -> Iterator[list[VideoFeatures]]:
        """The features of each list of clip indices, read in ``workers`` threads a few batches ahead."""
        return iter(Prefetcher(index_lists, lambda i, _state: self.load(i), workers=workers, ahead=LOAD_AHEAD))


class FeatureStore:
    """The files of one run's clips: the feature cache's entries (``cache``), or ``scratch`` for the rest."""

    def __init__(self, scratch: Path, cache: FeatureCache | None = None) -> None:
        self.scratch, self.cache = scratch, cache
        self.scratch_written = 0

    def place(self, index: int, source: VideoSource) -> tuple[Path, bool]:
        """Where clip ``index``'s features go, and whether that is a cache entry (kept after the run)."""
        key = self.cache.key(source) if self.cache is not None else None
        if key is not None:
            return self.cache.path(key), True
        return self.scratch / f"clip-{index:07d}.safetensors", False

    def fill(self, extractor: FeatureExtractor, sources: Sequence[VideoSource], indices: Sequence[int], *,
             offset: int = 0, batch: int = 8, workers: int | None = None) -> tuple[dict[int, str], dict[int, str]]:
        """Write the features of ``sources[i]`` for ``i`` in ``indices`` (cache entries already there are kept;
        scratch files are named by ``offset + i``). Returns ``{index: file}`` of the readable clips and
        ``{index: error}`` of the others."""
        done: dict[int, str] = {}
        todo: list[tuple[int, Path, bool]] = []
        for i in indices:
            path, cached = self.place(offset + i, sources[i])
            if cached and is_entry(path):
                done[i] = str(path)
                self.cache.hits += 1
            else:
                todo.append((i, path, cached))
        errors: dict[int, str] = {}
        face = extractor.face_encoder if extractor.vconfig.uses("face") else None

        def prepare(item: tuple[int, Path, bool], _state: Any) -> Any:
            try:
                clip = load_clip(sources[item[0]], extractor.sampling)
                return clip, detect_faces(clip, face)
            except VideoInputError as exc:
                return str(exc)

        for part, loaded in zip(chunked(todo, batch), Prefetcher(chunked(todo, batch), prepare, workers=workers)):
            ok = [(item, got) for item, got in zip(part, loaded) if not isinstance(got, str)]
            errors.update({item[0]: got for item, got in zip(part, loaded) if isinstance(got, str)})
            feats = extractor([c for _, (c, _) in ok], [t for _, (_, t) in ok]) if ok else []
            for ((i, path, cached), _), f in zip(ok, feats):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_features(path, f)
                done[i] = str(path)
                if cached:
                    self.cache.stored += 1
                else:
                    self.scratch_written += 1
        return done, errors


def scratch_folder(run: Path | None, accelerator: Any) -> Path:
    """An empty scratch folder that every process sees: ``<run>/feature_scratch`` (emptied: what a killed run left
    is computed again), or a temporary folder made by the main process without a run folder."""
    from accelerate.utils import broadcast_object_list

    path = [str(run / SCRATCH_DIR) if run is not None else ""]
    if accelerator.is_main_process:
        if run is not None:
            shutil.rmtree(path[0], ignore_errors=True)
            Path(path[0]).mkdir(parents=True)
        else:
            path[0] = tempfile.mkdtemp(prefix="feval-video-features-")
    if accelerator.num_processes > 1:
        broadcast_object_list(path)
    accelerator.wait_for_everyone()
    return Path(path[0])


def store_clips(store: FeatureStore, extractor: FeatureExtractor, pairs: Sequence[tuple[VideoSource, float]],
                accelerator: Any, offset: int = 0) -> tuple[StoredClips, dict[str, str]]:
    """Write the features of every clip of ``pairs`` (this process: its shard, every N-th) and return, on every
    process, the readable clips in input order and the errors of the others (``{name: error}``). ``offset`` keeps
    scratch names apart between the training and the validation clips."""
    sources = [s for s, _ in pairs]
    mine = list(range(accelerator.process_index, len(sources), accelerator.num_processes))
    done, errors = store.fill(extractor, sources, mine, offset=offset)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(done, errors)])
        done = {i: path for part_done, _ in parts for i, path in part_done.items()}
        errors = {i: err for _, part_errors in parts for i, err in part_errors.items()}
    clips = StoredClips()
    for i, (src, mos) in enumerate(pairs):
        if i in done:
            clips.paths.append(Path(done[i]))
            clips.names.append(src.name)
            clips.mos.append(float(mos))
    return clips, {sources[i].name: errors[i] for i in sorted(errors)}
