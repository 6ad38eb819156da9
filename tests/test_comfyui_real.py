"""The pack in a real ComfyUI: registration, the graphs the stub tests run, the example workflows' validation.

Skipped unless ``COMFYUI_PATH`` names a ComfyUI checkout (the folder with ``main.py``). ComfyUI is started headless
on the CPU (``--cpu --base-directory <tmp>``) with this pack linked into ``custom_nodes/``, the tiny checkpoint in
``models/feval`` and the tiny face pack in ``models/insightface``; nothing is downloaded (the server runs with
``HF_HUB_OFFLINE=1``). ``COMFYUI_PYTHON`` picks the interpreter (default: this one); it needs ComfyUI's
requirements and this package (``pip install -e .``). Run::

    COMFYUI_PATH=~/ComfyUI python -m pytest tests/test_comfyui_real.py -v
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.comfy_stub import PACK_ROOT
from tests.comfy_stub.core_nodes import FRONTEND_ONLY
from tests.comfy_stub.validation import ui_to_api

COMFYUI = os.environ.get("COMFYUI_PATH", "")
pytestmark = pytest.mark.skipif(not COMFYUI or not (Path(COMFYUI).expanduser() / "main.py").is_file(),
                                reason="set COMFYUI_PATH to a ComfyUI checkout (the folder with main.py) to run these")
LEAK = "Potential memory leak detected with model"
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A headless ComfyUI on 127.0.0.1 and the few HTTP calls the tests make."""

    def __init__(self, base: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(base), "--disable-auto-launch", "--dont-print-server"]
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=Path(COMFYUI).expanduser(), env=env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT)

    def request(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_ready(self, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                if self.request("/object_info/FEvalModelLoader")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise TimeoutError(f"ComfyUI did not start in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """POST the prompt and wait for its history entry; raises with ComfyUI's node errors if it is refused."""
        status, answer = self.request("/prompt", {"prompt": prompt})
        if status != 200:
            raise AssertionError(f"ComfyUI refused the prompt ({status}): {json.dumps(answer)[:3000]}")
        pid = answer["prompt_id"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            history = self.request(f"/history/{pid}")[1]
            if pid in history and history[pid].get("status", {}).get("completed") is not None:
                return history[pid]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path, faces):
    base = tmp_path_factory.mktemp("ComfyUI-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "feval").symlink_to(PACK_ROOT, target_is_directory=True)
    shutil.copytree(tiny_ckpt, base / "models" / "feval" / "tiny")
    shutil.copytree(tiny_ckpt / "face_pack" / "models" / "tiny_face", base / "models" / "insightface" / "models"
                    / "tiny_face")
    (base / "input").mkdir()
    for name in ("a", "b", "none"):
        Image.fromarray(faces[name]).save(base / "input" / f"face_{name}.png")
    server = Server(base, base / "comfyui.log")
    try:
        server.wait_ready()
        yield SimpleNamespace(server=server, base=base)
    finally:
        server.stop()


def score_graph(threshold: float, dtype: str = "auto") -> dict:
    """Load two images (a face, no face) -> load the model -> score -> filter -> preview the kept images."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face_a.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "face_none.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "FEvalModelLoader", "inputs": {"source": "models folder", "checkpoint": "tiny",
                                                           "hub_id": "", "face_pack": "auto", "device": "cpu",
                                                           "dtype": dtype}},
        "5": {"class_type": "FEvalScoreFaces", "inputs": {"model": ["4", 0], "images": ["3", 0], "quality": True,
                                                          "authenticity": True, "identity": True,
                                                          "correspondence": True, "batch_size": 2,
                                                          "prompt": "a photo of a face", "reference": ["1", 0]}},
        "6": {"class_type": "FEvalFilterByScore", "inputs": {
            "images": ["3", 0], "scores": ["5", 0], "min_quality": threshold, "min_authenticity": 0.0,
            "min_identity": 0.0, "min_correspondence": 0.0, "min_total": 0.0, "weight_quality": 1.0,
            "weight_authenticity": 1.0, "weight_identity": 1.0, "weight_correspondence": 1.0, "top_k": 0,
            "missing": "ignore"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["5", 6]}},
    }


def test_every_node_registers(comfy) -> None:
    info = comfy.server.request("/object_info")[1]
    ours = {k for k, v in info.items() if v.get("category") == "F-Eval"}
    assert ours == {"FEvalModelLoader", "FEvalScoreFaces", "FEvalFilterByScore", "FEvalPickBest",
                    "FEvalFaceSimilarity"}
    ckpt = info["FEvalModelLoader"]["input"]["required"]["checkpoint"]
    options = ckpt[1]["options"] if ckpt[0] == "COMBO" else ckpt[0]
    assert "tiny" in options and "(none)" in options


def test_score_filter_preview_run(comfy) -> None:
    done = comfy.server.run(score_graph(threshold=0.0))
    assert done["status"]["status_str"] == "success", done["status"]
    outputs = done["outputs"]
    assert len(outputs["8"]["images"]) == 2  # the scored preview of both images
    text = outputs["5"]["text"][0]
    assert "0-100, higher is better" in text and "no face detected in the image; identity not scored" in text
    assert text.count("no face detected in the image") == 1  # said once in the row
    assert len(outputs["7"]["images"]) == 2  # 'ignore': the threshold 0 keeps both


def test_empty_filter_skips_the_preview_without_an_error(comfy) -> None:
    done = comfy.server.run(score_graph(threshold=100.0))
    assert done["status"]["status_str"] == "success", done["status"]
    assert "7" not in done["outputs"] or not done["outputs"]["7"].get("images")  # PreviewImage skipped
    assert "no image passed" in done["outputs"]["6"]["text"][0]
    assert not [m for m in done["status"].get("messages", []) if m[0] == "execution_error"]


def test_dropping_a_loaded_model_needs_no_full_garbage_collection(comfy) -> None:
    """A new dtype re-runs the loader; ComfyUI drops the old model and checks for leaks before the next run."""
    for dtype in ("float32", "auto", "float32"):
        assert comfy.server.run(score_graph(0.0, dtype=dtype))["status"]["status_str"] == "success"
    log = (comfy.base / "comfyui.log").read_text()
    assert LEAK not in log, [line for line in log.splitlines() if LEAK in line]


def object_info_specs(info: dict) -> dict[str, dict]:
    """Node specs in the form ``tests/comfy_stub/validation.py`` takes, from ComfyUI's /object_info."""
    specs = {}
    for name, node in info.items():
        inputs = []
        for section in ("required", "optional"):
            for inp in node.get("input_order", {}).get(section, []):
                kind, *opts = node["input"][section][inp]
                opts = opts[0] if opts else {}
                spec = {"name": inp, "type": "COMBO" if isinstance(kind, list) else kind,
                        "optional": section == "optional"}
                spec.update({k: opts[k] for k in ("control_after_generate", "image_upload", "forceInput")
                             if opts.get(k)})
                if kind == "INT" and inp in ("seed", "noise_seed"):  # older versions: the frontend adds it by name
                    spec["control_after_generate"] = True
                inputs.append(spec)
        specs[name] = {"inputs": inputs}
    return specs


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_passes_comfyuis_validation(comfy, path: Path) -> None:
    """ComfyUI accepts each example graph (its checks run before anything executes). The core models the graphs
    name are empty placeholder files, and the hub is offline, so the run itself stops at the first model load."""
    graph = json.loads(path.read_text())
    prompt = ui_to_api(graph, object_info_specs(comfy.server.request("/object_info")[1]), set(FRONTEND_ONLY))
    folders = {"ckpt_name": "checkpoints", "model_name": "upscale_models", "photomaker_model_name": "photomaker"}
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if key in folders:
                (comfy.base / "models" / folders[key]).mkdir(parents=True, exist_ok=True)
                (comfy.base / "models" / folders[key] / value).touch()
            elif key == "image" and node["class_type"] == "LoadImage":
                Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(comfy.base / "input" / value)
    done = comfy.server.run(prompt)  # raises with ComfyUI's node errors if validation refuses the graph
    errors = [m[1] for m in done["status"].get("messages", []) if m[0] == "execution_error"]
    assert all(e.get("node_type") != "FEvalModelLoader" or "hub" in e.get("exception_message", "")
               for e in errors), errors
