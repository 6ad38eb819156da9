"""Serving: the scorer behind HTTP for trainers whose GPUs are busy with the generator (``feval serve``).

* :mod:`.wire` — the request and response documents (images as base64 PNG/JPEG/WebP bytes), shared by the server
  and the client (:func:`reward.remote_reward`), so a remote score equals an in-process one;
* :mod:`.server` — the LitServe API (one replica per GPU, dynamic batching across requests) and the guard that
  answers at once over its limits (token, request size, requests in flight).

Imports :mod:`feval_core.scoring`, :mod:`feval_core.inputs` and the base modules; LitServe only in :mod:`.server`
(the ``serve`` extra).
"""
