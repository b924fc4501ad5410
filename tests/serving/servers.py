"""A real uvicorn server for tests and benchmarks: the app on 127.0.0.1 and a free port, in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from tests.postgres import free_port


@contextlib.contextmanager
def uvicorn_server(app, startup_timeout_s: float = 600.0) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
