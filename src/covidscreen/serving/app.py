"""The FastAPI application: ``create_app(config)``.

Endpoints (OpenAPI at ``/docs``): ``POST /v1/predict``, ``POST /v1/explain``, ``GET /v1/model``, ``GET /healthz``,
``GET /readyz``, ``POST /fhir/predict``, and the web page at ``/``. Every error is JSON ``{"request_id", "error",
"code"}`` with a message a person can act on; nothing answers with a traceback. ``/v1/predict`` with ``Accept:
application/fhir+json``, and ``/fhir/predict``, answer in FHIR R4 (``fhir.py``): a Bundle of DiagnosticReports,
Observations and the Device, or an OperationOutcome for errors.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import key_is_valid, presented_key, read_api_keys
from .config import ServeConfig
from .fhir import FHIR_JSON, error_outcome, report_bundle, wants_fhir
from .metrics import CONTENT_TYPE_LATEST
from .middleware import BodyLimitMiddleware, RequestLogMiddleware
from .schemas import ErrorResponse, FileResult, Health, ModelInfo, PredictResponse
from .service import NOTICE, Screening, ServiceError, Upload

logger = logging.getLogger("covidscreen.serving")
ACCEPTED = "PNG, JPEG or DICOM files in the multipart form field 'files'"
ERRORS = {status: {"model": ErrorResponse} for status in (401, 409, 413, 422, 503)}


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def _error(request: Request, status: int, code: str, message: str, headers: dict | None = None,
           results: list | None = None) -> JSONResponse:
    request.scope.setdefault("state", {}).setdefault("log", {})["error"] = code
    if wants_fhir(request.headers.get("accept"), request.url.path):
        return JSONResponse(error_outcome(status, message, results and [FileResult(**r) for r in results]),
                            status_code=status, headers=headers, media_type=FHIR_JSON)
    body = ErrorResponse(request_id=_request_id(request), error=message, code=code, results=results)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def create_app(config: ServeConfig, screening: Screening | None = None) -> FastAPI:
    """The service's app; loads the run now (so that a bad run folder fails before the server starts).

    Raises:
        CovidscreenError: bad run folder, backend, operating point, database URL or API-key file.
    """
    keys = read_api_keys(config.api_key_file) if config.api_key_file else None
    screening = screening or Screening(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await screening.start()
        try:
            yield
        finally:
            await screening.stop()

    app = FastAPI(title="covidscreen second reader", version="1", lifespan=lifespan,
                  description=f"COVID-19 screening of chest X-rays, as a second reader. {NOTICE}")
    app.state.screening = screening

    async def require_key(request: Request) -> None:
        if keys is not None and not key_is_valid(presented_key(request.headers), keys):
            raise ServiceError(401, "unauthorised", "a valid API key is needed: send it as 'X-API-Key: KEY' or "
                                                    "'Authorization: Bearer KEY'")

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        results = [r.model_dump(exclude_none=True) for r in exc.results] if exc.results else None
        if exc.results:
            request.scope["state"]["log"]["statuses"] = [r.status for r in exc.results]
        return _error(request, exc.status, exc.code, exc.message, headers, results)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        missing = [e for e in exc.errors() if e.get("type") == "missing"]
        if any(e.get("loc", [None])[-1] == "files" for e in missing) or request.url.path.startswith(
                ("/v1/predict", "/v1/explain", "/fhir/")):
            fields = ", ".join(".".join(str(p) for p in e.get("loc", [])[1:]) or "body" for e in exc.errors())
            return _error(request, 422, "bad_request", f"the request is not a usable upload (problem with: {fields}); "
                          f"send multipart/form-data with one or more {ACCEPTED}")
        msgs = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors())
        return _error(request, 422, "bad_request", f"invalid request: {msgs}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint {request.url.path}; see /docs for the API"
        elif exc.status_code == 400:
            message = f"the request could not be read ({exc.detail}); send multipart/form-data with {ACCEPTED}"
        return _error(request, exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in request %s", _request_id(request))
        return _error(request, 500, "internal_error", f"internal error; nothing was predicted or logged for this "
                      f"request. Report request id {_request_id(request)} to the service's operators")

    static = resources.files("covidscreen.serving") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/metrics", include_in_schema=True, dependencies=[Depends(require_key)],
             summary="Prometheus metrics: requests, errors, latency, OOD-flag and COVID-positive rates, drift")
    async def metrics() -> Response:
        return Response(screening.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        screening.metrics.request(name, response.status_code, time.perf_counter() - t0)
        return response

    @app.get("/healthz", response_model=Health, summary="the process is alive")
    async def healthz() -> Health:
        return Health(status="alive")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}},
             summary="model loaded and warmed up, audit log writable")
    async def readyz() -> JSONResponse:
        reasons = await screening.readiness()
        body = Health(status="ready" if not reasons else "not ready", reasons=reasons)
        return JSONResponse(body.model_dump(), status_code=200 if not reasons else 503)

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS, dependencies=[Depends(require_key)],
             summary="what the model card says")
    async def model() -> ModelInfo:
        return screening.info

    async def _predict(request: Request, files: list[UploadFile], operating_point: str | None, site: str | None,
                       explain: bool, target: str | None = None, figure: bool = False) -> PredictResponse:
        uploads = [Upload(f.filename or "upload", await f.read()) for f in files]
        request.scope["state"]["log"]["files"] = len(uploads)
        rid = _request_id(request)
        results = await screening.predict(uploads, rid, operating_point, explain=explain, target=target,
                                          figure=figure, site=site or "")
        request.scope["state"]["log"]["statuses"] = [r.status for r in results]
        return PredictResponse(request_id=rid, model_id=screening.model_id, weights_sha256=screening.weights_sha256,
                               results=results, notice=NOTICE)

    point_q = Query(None, description="operating point (default: the service's); see /v1/model")
    site_q = Query(None, description="label of the sending ward or station, stored in the audit log so that drift "
                   "can be seen per site (1-64 letters, digits, '.', '_', '-'; never a patient identifier)")

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS,
              dependencies=[Depends(require_key)], summary="probabilities and decision for each uploaded image")
    async def predict(request: Request, files: Annotated[list[UploadFile], File(description=ACCEPTED)],
                      operating_point: str | None = point_q, site: str | None = site_q) -> PredictResponse:
        answer = await _predict(request, files, operating_point, site, explain=False)
        if wants_fhir(request.headers.get("accept"), request.url.path):
            return _fhir(answer)
        return answer

    def _fhir(answer: PredictResponse) -> JSONResponse:
        return JSONResponse(report_bundle(answer.results, screening.info, answer.request_id, NOTICE),
                            media_type=FHIR_JSON)

    @app.post("/fhir/predict", responses={200: {"content": {FHIR_JSON: {}}}, **ERRORS},
              dependencies=[Depends(require_key)], summary="the same, as FHIR R4: a Bundle of a DiagnosticReport "
              "with an Observation per class and the Device (the model) per image; errors as OperationOutcome")
    async def fhir_predict(request: Request, files: Annotated[list[UploadFile], File(description=ACCEPTED)],
                           operating_point: str | None = point_q, site: str | None = site_q) -> JSONResponse:
        return _fhir(await _predict(request, files, operating_point, site, explain=False))

    @app.post("/v1/explain", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS,
              dependencies=[Depends(require_key)], summary="the same plus a Grad-CAM overlay per image")
    async def explain(request: Request, files: Annotated[list[UploadFile], File(description=ACCEPTED)],
                      operating_point: str | None = point_q, site: str | None = site_q,
                      target: str | None = Query(None, description="class to explain (default: most probable)"),
                      figure: bool = Query(False, description="also return the figure covidscreen explain writes")
                      ) -> PredictResponse:
        return await _predict(request, files, operating_point, site, explain=True, target=target, figure=figure)

    # outermost first: the log line sees the 413 of the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes)
    app.add_middleware(RequestLogMiddleware)
    return app
