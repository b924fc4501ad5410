"""The second-reader HTTP service: a trained run behind FastAPI, with a web page and an audit log.

- ``config.py``: :class:`ServeConfig`, every limit with its default (upload size, files, pixels, queue, batch).
- ``app.py``: :func:`create_app`, the endpoints (``/v1/predict``, ``/v1/explain``, ``/v1/model``, ``/healthz``,
  ``/readyz``, the page at ``/``) and JSON errors.
- ``service.py``: :class:`Screening`, the work behind the endpoints (Predictor, warnings, Grad-CAM, audit log).
- ``batcher.py``: bounded admission (503 past it) and micro-batching into one forward pass.
- ``middleware.py``: request ids, one JSON log line per request, the upload size limit (413).
- ``auth.py``: optional API keys; ``schemas.py``: pydantic request/response models; ``modelinfo.py``: the model card
  facts of ``/v1/model``; ``server.py``: running it under uvicorn, and what ``covidscreen serve`` / ``audit-log``
  (``cli/serve.py``) call.
- ``static/``: the web page (plain HTML, CSS and JavaScript; no build step).
"""

from .app import create_app
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
