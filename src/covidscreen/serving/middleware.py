"""ASGI middleware: request ids and one JSON log line per request; the upload size limit.

Log lines hold the request id, method, path, status, latency, client address and, for predictions, the number of
files and their statuses. They never hold file names (they may carry patient names), image data or API keys.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger("covidscreen.serving.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestLogMiddleware:
    """Gives every request an id (a caller's valid ``X-Request-ID``, else a new one), echoes it in the response,
    and logs one JSON line when the response is done."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log"] = {}
        status = {"code": 500}
        start = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client") or ("", 0)
            line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "request_id": request_id,
                    "method": scope.get("method"), "path": scope.get("path"), "status": status["code"],
                    "latency_ms": round((time.perf_counter() - start) * 1000, 2), "client": client[0],
                    **state.get("log", {})}
            logger.info(json.dumps(line))


class BodyLimitMiddleware:
    """Answers 413 to request bodies over ``max_bytes``: at once when ``Content-Length`` says so, else as soon as
    the streamed body passes the limit (the rest is not read)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return (f"the upload is too large ({size}); at most {self.max_bytes / 2**20:.0f} MiB per request: send fewer "
                "or smaller files (chest X-rays are PNG, JPEG or DICOM files of a few MiB)")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, send, self._message(f"{int(length) / 2**20:.1f} MiB"))
            return
        seen = {"bytes": 0, "over": False, "started": False}

        async def limited_receive() -> dict:
            if seen["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > self.max_bytes:
                    seen["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if seen["over"]:
                return  # the app's answer to a body cut short is replaced by the 413 below
            seen["started"] = seen["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not seen["over"]:
                raise
        if seen["over"] and not seen["started"]:
            await self._reject(scope, send, self._message(f"more than {self.max_bytes / 2**20:.0f} MiB"))

    async def _reject(self, scope: dict, send: Any, message: str) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        body = json.dumps({"request_id": request_id, "error": message, "code": "upload_too_large"}).encode()
        scope.setdefault("state", {}).setdefault("log", {})["error"] = "upload_too_large"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
