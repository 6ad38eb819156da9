"""Shared parts of the speed benchmarks (``benchmarks/throughput.py``, ``benchmarks/gpu_suite.py``).

* :mod:`.backbones` — Qwen2.5-VL-class backbones at real size from configs, built on the meta device and
  initialised on the target device; the scorer around them; synthetic face images;
* :mod:`.flops` — analytic model FLOPs of the work a pass did;
* :mod:`.measure` — the bf16 matmul peak, the fast path, the CPU side, the naive path, ablations;
* :mod:`.report` — result rows and the Markdown table;
* :mod:`.budget` — a wall-clock budget that decides which step still fits;
* :mod:`.run` — all measurements of one backbone, each step only when it fits the budget;
* :mod:`.sections` — the sections of the GPU suite beyond throughput (differentiable reward, face workers, and
  the hooks where the FIQA and video scorers plug in).
"""
