"""Manifest reading/writing, the FaceQ importer and train/val/test splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from feval_core.data.faceq import import_faceq
from feval_core.data.manifest import ManifestRow, read_manifest, write_manifest
from feval_core.data.splits import split_rows, write_splits
from feval_core.errors import ManifestError


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x89PNG\r\n\x1a\n")


def _write_lines(path: Path, objs: list) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


# --- manifest ------------------------------------------------------------------------------------------


def test_read_manifest_resolves_paths_and_skips_blank_lines(tmp_path: Path) -> None:
    _touch(tmp_path, "img/a.png", "img/ref.png")
    path = _write_lines(tmp_path / "m.jsonl", [
        {"image": "img/a.png", "task": "customization", "prompt": "a man", "ref": "img/ref.png", "model": "InstantID",
         "mos": {"quality": 50, "identity": 70.5, "correspondence": 10}},
        "",
        {"image": str(tmp_path / "img/a.png"), "task": "generation", "mos": {"authenticity": 0}},
    ])
    rows = read_manifest(path)
    assert len(rows) == 2
    assert rows[0].image == tmp_path / "img/a.png" and rows[0].ref == tmp_path / "img/ref.png"
    assert rows[0].mos == {"quality": 50.0, "identity": 70.5, "correspondence": 10.0}
    assert rows[0].model == "InstantID" and rows[0].line == 1
    assert rows[1].line == 3 and rows[1].lq is None


def test_manifest_round_trip_writes_relative_paths(tmp_path: Path) -> None:
    _touch(tmp_path, "data/x.png", "data/lq.png")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    rows = [ManifestRow(image=tmp_path / "data/x.png", task="restoration", lq=tmp_path / "data/lq.png",
                        mos={"identity": 30.0, "quality": 40.0}),
            ManifestRow(image=outside, task="generation", mos={"quality": 1.0})]
    path = tmp_path / "m.jsonl"
    write_manifest(rows, path)
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    assert objs[0]["image"] == "data/x.png" and objs[0]["lq"] == "data/lq.png"
    assert list(objs[0]["mos"]) == ["quality", "identity"]  # canonical dimension order
    assert objs[1]["image"] == str(outside)
    back = read_manifest(path, check_files=False)
    assert [(r.image, r.task, r.mos, r.lq) for r in back] == [(r.image, r.task, r.mos, r.lq) for r in rows]


def test_manifest_reports_every_bad_line_at_once(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [
        "{not json",
        {"task": "generation", "mos": {"quality": 1}},
        {"image": "a.png", "task": "upscaling", "mos": {"quality": 1}},
        {"image": "a.png", "task": "generation", "mos": {"qualty": 1}},
        {"image": "a.png", "task": "generation", "mos": {"quality": "high"}},
        '{"image": "a.png", "task": "generation", "mos": {"quality": NaN}}',
        {"image": "a.png", "task": "generation", "mos": {"quality": 4.5e2}},
        {"image": "a.png", "task": "generation", "mos": {"correspondence": 50}},
        {"image": "a.png", "task": "customization", "prompt": "p", "mos": {"identity": 50}},
        {"image": "missing.png", "task": "generation", "mos": {"quality": 50}},
    ])
    _touch(tmp_path, "a.png")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    for line, needle in [(1, "invalid JSON"), (2, 'missing "image"'), (3, "generation, customization, restoration"),
                         (4, "did you mean 'quality'"), (5, "not a number"), (6, "NaN"), (7, "(x-1)*25"),
                         (8, 'needs a "prompt"'), (9, '"ref"'), (10, "image file not found")]:
        assert f"{path}:{line}: " in msg and needle in msg, (line, needle, msg)
    assert "10 problems" in msg


def test_manifest_error_list_is_capped(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [{"task": "generation", "mos": {"quality": 1}}] * 30)
    with pytest.raises(ManifestError, match=r"and 10 more"):
        read_manifest(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_manifest_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(path)


def test_missing_manifest_and_check_files_off(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    path = _write_lines(tmp_path / "m.jsonl", [{"image": "ghost.png", "task": "generation", "mos": {"quality": 3}}])
    assert read_manifest(path, check_files=False)[0].image == tmp_path / "ghost.png"


def test_write_manifest_refuses_invalid_rows(tmp_path: Path) -> None:
    bad = ManifestRow(image=tmp_path / "a.png", task="generation", mos={"quality": 101.0})
    with pytest.raises(ManifestError, match=r"0\.\.100"):
        write_manifest([bad], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


# --- FaceQ importer ------------------------------------------------------------------------------------


def _by_name(rows: list[ManifestRow]) -> dict[str, ManifestRow]:
    return {r.image.name: r for r in rows}


def test_faceq_csv_with_header(tmp_path: Path) -> None:
    root = tmp_path / "FaceQ"
    _touch(root, "images/generation/SDXL/g1.png", "images/generation/Flux/g2.jpg", "images/generation/Flux/g3.png")
    (root / "MOSs").mkdir()
    (root / "MOSs/generation.csv").write_text(
        "Image Name,Model,Prompt,Quality,Authenticity,Correspondence,MOS_std\n"
        'g1.png,SDXL,"a woman, smiling",61.5,40,70,3.2\n'
        "generation/Flux/g2.jpg,,an old man,20,10.5,55,1.0\n"
        "g3,Flux,a child,80,90,,2.0\n")
    rows = import_faceq(root, tmp_path / "out/manifest.jsonl")
    got = _by_name(rows)
    assert got["g1.png"].mos == {"quality": 61.5, "authenticity": 40.0, "correspondence": 70.0}
    assert got["g1.png"].prompt == "a woman, smiling" and got["g1.png"].task == "generation"
    assert got["g2.jpg"].model == "Flux"  # from the folder
    assert got["g3.png"].mos == {"quality": 80.0, "authenticity": 90.0}  # empty cell: dimension left out
    back = read_manifest(tmp_path / "out/manifest.jsonl")
    assert [(r.image, r.mos, r.model) for r in back] == [(r.image, r.mos, r.model) for r in rows]


def test_faceq_headerless_txt_per_dimension_merges_and_rescales(tmp_path: Path, caplog) -> None:
    root = tmp_path
    _touch(root, "images/restoration/GPEN/r1.png", "images/restoration/GPEN/r2.png",
           "images/restoration/lq/r1_lq.png", "images/restoration/lq/r2_lq.png")
    mos = root / "MOSs/restoration"
    mos.mkdir(parents=True)
    (mos / "quality.txt").write_text("r1.png 1.0\nr2.png   5\n")  # 1..5 scale
    (mos / "ID.txt").write_text("r1.png\t55.5\nr2.png\t60\n")
    (mos / "pairs.csv").write_text("image,lq\nr1.png,r1_lq.png\nr2.png,restoration/lq/r2_lq.png\n")
    with caplog.at_level(logging.WARNING, logger="feval_core.data.faceq"):
        rows = import_faceq(root, root / "m.jsonl")
    assert "(x-1)*25" in caplog.text
    got = _by_name(rows)
    assert got["r1.png"].mos == {"quality": 0.0, "identity": 55.5}
    assert got["r2.png"].mos == {"quality": 100.0, "identity": 60.0}
    assert got["r1.png"].lq == root / "images/restoration/lq/r1_lq.png"
    assert got["r1.png"].task == "restoration" and got["r1.png"].model == "GPEN"
    assert len(rows) == 2  # lq images have no scores of their own


def test_faceq_tsv_json_and_task_hint(tmp_path: Path) -> None:
    root = tmp_path
    _touch(root, "images/a/1.png", "images/b/1.png", "images/c/2.png")
    (root / "MOSs").mkdir()
    (root / "MOSs/gen_authenticity_mos.tsv").write_text("name\tmos\tmodel\n1.png\t30\ta\n1.png\t40\tb\n")
    (root / "MOSs/quality.json").write_text(json.dumps({"a/1.png": 2.5, "b/1": 0.0, "2.png": 5.0}))  # 0..5
    (root / "MOSs/extra.json").write_text(json.dumps(
        [{"filename": "2.png", "caption": "a cat person", "alignment": 66, "task": "gen"}]))
    rows = import_faceq(root, root / "m.jsonl", task_hint="generation")
    got = {r.image.relative_to(root / "images").as_posix(): r for r in rows}
    assert got["a/1.png"].mos == {"quality": 50.0, "authenticity": 30.0}  # ambiguous name split by model column
    assert got["b/1.png"].mos == {"quality": 0.0, "authenticity": 40.0}
    assert got["c/2.png"].mos == {"quality": 100.0, "correspondence": 66.0}
    assert got["c/2.png"].prompt == "a cat person" and got["c/2.png"].model == "c"
    assert {r.task for r in rows} == {"generation"}


def test_faceq_xlsx(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path
    _touch(root, "images/customization/InstantID/c1.png", "refs/p1.png")
    (root / "MOSs").mkdir()
    import pandas as pd

    with pd.ExcelWriter(root / "MOSs/scores.xlsx") as writer:
        pd.DataFrame({"img": ["c1.png"], "Quality": [70.0], "ID_Fidelity": [80.0], "Consistency": [60.0],
                      "Prompt": ["a man"], "Reference": ["p1.png"]}).to_excel(writer, sheet_name="Customization",
                                                                              index=False)
    rows = import_faceq(root, root / "m.jsonl")
    assert rows[0].mos == {"quality": 70.0, "identity": 80.0, "correspondence": 60.0}
    assert rows[0].ref == root / "refs/p1.png" and rows[0].task == "customization"


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"generation.csv": "image,quality,sharpness\na.png,50,3\n"}, "unknown column(s) 'sharpness'"),
        ({"generation.csv": "image,prompt\n"}, "header row but no data"),
        ({"generation.csv": "image,model\na.png,SDXL\n"}, "no score column"),
        ({"generation_quality.csv": "image,mos\nzz.png,50\nyy.png,40\na.png,30\n"}, "2 of 3 images not found"),
        ({"generation_quality.csv": ""}, "empty file"),
        ({"generation.csv": "image,mos\na.png,50\n"}, "does not say the dimension"),
        ({"quality.csv": "image,mos\na.png,50\n"}, "cannot tell the task"),
        ({"generation_quality.csv": "a.png,50,1,2\n"}, "no header row and 4 columns"),
        ({"generation_quality.csv": "a.png,250\n"}, "outside the 0-100 scale"),
        ({"generation_quality.csv": "a.png,50\n", "generation_q2_quality.csv": "a.png,60\n"},
         "given for the same image"),
        ({"scores.mat": "x"}, "convert it to CSV"),
        ({"generation_identity.csv": "a.png,50\n"}, 'identity MOS needs "ref"'),
    ],
)
def test_faceq_fails_clearly(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    _touch(tmp_path, "images/a.png")
    (tmp_path / "MOSs").mkdir()
    for name, text in files.items():
        (tmp_path / "MOSs" / name).write_text(text)
    with pytest.raises(ManifestError) as info:
        import_faceq(tmp_path, tmp_path / "m.jsonl")
    assert needle in str(info.value)
    assert not (tmp_path / "m.jsonl").exists()


def test_faceq_without_mos_folder(tmp_path: Path) -> None:
    _touch(tmp_path, "images/a.png")
    with pytest.raises(ManifestError, match="images/ and MOSs/"):
        import_faceq(tmp_path, tmp_path / "m.jsonl")


# --- splits --------------------------------------------------------------------------------------------


def _rows(n_models: int = 10, per_model: int = 20, dims_per_image: int = 1) -> list[ManifestRow]:
    rows = []
    for m in range(n_models):
        for i in range(per_model + m):  # unequal group sizes
            for d in ("quality", "authenticity")[:dims_per_image]:
                rows.append(ManifestRow(image=Path(f"/x/m{m}/{i}.png"), task="generation", mos={d: 50.0},
                                        model=f"m{m}", line=len(rows) + 1))
    return rows


def _ids(split: dict[str, list[ManifestRow]]) -> dict[str, list[int]]:
    return {k: [r.line for r in v] for k, v in split.items()}


@pytest.mark.parametrize("by", ["model", "image", None])
def test_split_is_a_reproducible_partition(by: str | None) -> None:
    rows = _rows(dims_per_image=2)
    a, b = split_rows(rows, seed=1, by=by), split_rows(rows, seed=1, by=by)
    assert _ids(a) == _ids(b)
    assert _ids(a) != _ids(split_rows(rows, seed=2, by=by))
    assert sorted(r.line for part in a.values() for r in part) == [r.line for r in rows]
    assert all(part for part in a.values())
    for name, frac in zip(("train", "val", "test"), (0.8, 0.05, 0.15), strict=True):
        assert abs(len(a[name]) / len(rows) - frac) < (0.06 if by == "model" else 0.01)
    if by is not None:
        key = (lambda r: r.model) if by == "model" else (lambda r: r.image)
        owners = {}
        for name, part in a.items():
            for r in part:
                assert owners.setdefault(key(r), name) == name


def test_split_errors() -> None:
    rows = _rows(n_models=2)
    with pytest.raises(ManifestError, match="from 2 models"):
        split_rows(rows, by="model")
    assert len(split_rows(rows, by="model", fractions=(0.5, 0, 0.5))["val"]) == 0
    with pytest.raises(ManifestError, match='needs a "model"'):
        split_rows([*rows, ManifestRow(image=Path("/x/y.png"), task="generation", mos={"quality": 1.0})], by="model")
    for bad in [(0.8, 0.1, 0.2), (1.2, -0.2, 0.0), (0.5, 0.5)]:
        with pytest.raises(ValueError, match="fractions"):
            split_rows(rows, fractions=bad)
    with pytest.raises(ValueError, match="by="):
        split_rows(rows, by="prompt")


def test_write_splits(tmp_path: Path) -> None:
    rows = _rows(n_models=4, per_model=5)
    paths = write_splits(rows, tmp_path / "splits", fractions=(0.75, 0.0, 0.25), by="model", seed=3)
    assert set(paths) == {"train", "test"}
    back = {k: read_manifest(p, check_files=False) for k, p in paths.items()}
    assert sum(len(v) for v in back.values()) == len(rows)
    assert not {r.model for r in back["train"]} & {r.model for r in back["test"]}


def test_faceq_spreadsheet_without_its_reader_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from feval_core.data import faceq

    _touch(tmp_path, "images/generation/SDXL/g1.png")
    (tmp_path / "MOSs").mkdir()
    (tmp_path / "MOSs/generation.xlsx").write_bytes(b"PK\x03\x04")
    real = importlib.util.find_spec
    monkeypatch.setattr(faceq.importlib.util, "find_spec", lambda name, *a: None if name == "openpyxl" else real(name, *a))
    with pytest.raises(ManifestError, match="pip install openpyxl"):
        import_faceq(tmp_path, tmp_path / "m.jsonl")
