"""Tiny real-class models and data built offline, for tests, benchmarks and ``feval make-tiny``.

* :mod:`.tiny` — tiny random-weight Qwen2.5-VL, InternVL and LLaVA backbones and whole checkpoints;
* :mod:`.facepack` — a tiny insightface pack (ONNX graphs built with ``onnx.helper``) and faces it finds;
* :mod:`.facepack_sized` — an insightface pack with the real networks' compute (SCRFD-10G, iResNet-50), random
  weights, for timing;
* :mod:`.synthetic` — an opinion-score task whose MOS are known functions of what the image shows.

Scores from these models are meaningless. May import every room except :mod:`feval_core.cli`.
"""
