"""The FastAPI application: ``/v1/classify``, KServe v2, ``/metrics`` and the web page.

Bodies are read in full, with a size cap (413) and a deadline (408), before a request takes
one of the batcher's slots, so clients that stall mid-upload hold a connection, not the
queue. Decoding and preprocessing run in a thread pool, inference goes through the shared
:class:`~resnet50.apps.serve.batcher.Batcher`, a client that goes away is one log line and
its own metric, and every error a client can cause is a 4xx JSON ``{"error": "..."}``
naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from resnet50.apps.serve import v2
from resnet50.apps.serve.batcher import Batcher, Overloaded
from resnet50.apps.serve.connections import REFUSED
from resnet50.apps.serve.metrics import CONTENT_TYPE, Metrics
from resnet50.core.errors import ImageDecodeError, InvalidInputError, ResNet50Error
from resnet50.processing.preprocess import PreprocessContext

MODEL_NAME = "resnet50"
_ERROR_REASONS = {
    400: "bad_input",
    404: "not_found",
    405: "not_found",
    408: "timeout",
    413: "too_large",
    503: "overloaded",
}
GONE = 499  # nginx's "client closed request": the status recorded for a request whose client left


class ImageTooLarge(InvalidInputError):
    """An image that declares more pixels than the server decodes (answered with 413)."""


def check_pixels(data: bytes, source: str, limit: int) -> None:
    """Refuse an image whose header declares more than ``limit`` pixels before it is decoded: a
    file of a few kB can declare gigapixels. An image whose header Pillow cannot read is refused
    too (OpenCV would decode some such formats, e.g. Radiance HDR, with no size check first)."""
    if not data:
        return  # decode() names the empty input
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:  # past Pillow's own limit (~179 MP by default)
        raise ImageTooLarge(f"{source}: {exc} (this server decodes at most {limit / 1e6:g} megapixels)") from None
    except Exception:
        raise ImageDecodeError(
            f"{source}: not a decodable image in a format the server accepts (JPEG, PNG, WebP, BMP, TIFF, PNM)"
        ) from None
    if width * height > limit:
        raise ImageTooLarge(
            f"{source}: image is {width}x{height} ({width * height / 1e6:.1f} megapixels); this server "
            f"decodes at most {limit / 1e6:g} megapixels (--max-megapixels)"
        )


class BodyTooLarge(Exception):
    def __init__(self, limit: int, size: int | None = None):
        got = f"{size} bytes" if size is not None else "more"
        super().__init__(f"request body too large: {got}, the limit is {limit} bytes (--max-body-mb)")


class BodyTimeout(Exception):
    """The whole body did not arrive within ``--body-timeout`` seconds (answered with 408)."""

    def __init__(self, seconds: float, got: int, declared: str | None):
        of = f" of {declared}" if declared else ""
        super().__init__(
            f"request body not received within {seconds:g} s (--body-timeout): got {got}{of} bytes; "
            "send the whole body at once"
        )


class BodiesOverBudget(Exception):
    """Too many bytes of request bodies are being received at once (answered with 503)."""

    def __init__(self, held: int, limit: int):
        mb = 1024 * 1024
        super().__init__(
            f"server busy: {held / mb:.1f} MB of request bodies being received, the limit is {limit / mb:g} MB "
            "(--max-queue x --max-body-mb); retry after 1 s"
        )


class BodyBudget:
    """The bytes of request bodies being received, across requests: each request holds what it
    has received until it is admitted, and slow uploads in parallel must not pile up past
    ``limit`` (what ``max_queue`` admitted requests may hold)."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise BodiesOverBudget(self.held + size, self.limit)
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class ClientGone(Exception):
    """The client closed its connection before its answer (one log line, no response)."""

    def __init__(self, when: str):
        super().__init__(when)
        self.when = when


def create_app(
    model,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_queue: int = 64,
    max_body_mb: float = 32.0,
    max_megapixels: float = 100.0,
    workers: int = 2,
    body_timeout: float = 60.0,
    log=None,
) -> AccountingApp:
    """An ASGI app serving ``model`` (the FastAPI app is its ``.app``); the batcher and decode
    threads live as long as the app runs (its lifespan). A request body must arrive whole
    within ``body_timeout`` seconds; ``log`` takes one-line messages (default: stderr)."""
    metrics = Metrics({"weights": model.weights, "precision": model.precision, "backend": model.backend.name})
    batcher = Batcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, metrics=metrics)
    # python-multipart logs a warning for each flaw of a client's body (and with no handler set up,
    # Python prints it raw on stderr); the client gets our 400 naming the problem instead.
    for name in ("python_multipart", "multipart"):
        logging.getLogger(name).setLevel(logging.ERROR)
    max_body = int(max_body_mb * 1024 * 1024)
    budget = BodyBudget(max_body * max_queue)
    max_pixels = int(max_megapixels * 1e6)
    log = log or (lambda message: print(f"resnet50 serve: {message}", file=sys.stderr, flush=True))
    counts = {"accepted": 0, "answered": 0, "gone": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="resnet50-decode")
        batcher.start()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            for stop in app.state.before_stop:  # other front ends on this batcher (gRPC) drain first
                await stop()
            await batcher.stop()
            app.state.pool.shutdown(wait=True)
            gone = f"; {counts['gone']} clients went away before their answer" if counts["gone"] else ""
            log(f"stopped; answered {counts['answered']} of {counts['accepted']} requests accepted{gone}")

    app = FastAPI(title="resnet50", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ready = False
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.counts = counts
    app.state.before_stop = []  # coroutine functions awaited at shutdown before the batcher stops

    def model_fields(started: float) -> dict:
        return {
            "weights": model.weights,
            "model": MODEL_NAME,
            "precision": model.precision,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    async def in_pool(func, *args):
        return await asyncio.get_running_loop().run_in_executor(app.state.pool, func, *args)

    async def read_body(request: Request) -> bytes:
        """The whole body, within ``max_body`` bytes (413) and ``body_timeout`` seconds (408)."""
        got = [0]
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(_collect(request, max_body, got, budget), body_timeout)
        except asyncio.TimeoutError:
            raise BodyTimeout(body_timeout, got[0], request.headers.get("content-length")) from None
        except ClientDisconnect:
            raise ClientGone(f"while sending its body ({got[0]} bytes received)") from None
        except (BodyTooLarge, BodiesOverBudget):  # read what the client still sends (bounded, dropped)
            left = body_timeout - (time.perf_counter() - started)
            await _discard(request, 64 * 1024 * 1024, max(0.0, min(5.0, left)))
            raise
        finally:
            budget.give(got[0])

    def prepare(data: bytes, source: str) -> tuple[np.ndarray, tuple[int, int]]:
        check_pixels(data, source, max_pixels)
        crop, size = model.crop(data, source)
        return crop[None], size  # uint8: a float model's input is made per batch (a quarter of the memory)

    to_input = None if model.input_dtype == np.uint8 else model.input_from_crops

    # --- /v1/classify ---
    @app.post("/v1/classify")
    async def classify(request: Request):
        """An image as the raw body or multipart ``file`` field(s); ``?top_k=`` (default 5)."""
        started = time.perf_counter()
        top_k = _top_k(request.query_params.get("top_k", "5"))
        timing = {}
        body = await read_body(request)
        images = await _images(request, body)
        del body
        timing["read"] = time.perf_counter() - started
        ticket = batcher.admit()  # only now: a request still arriving holds no slot

        async def run():
            prepared = await asyncio.gather(*(in_pool(prepare, data, source) for data, source in images))
            tensor = prepared[0][0] if len(prepared) == 1 else np.concatenate([p[0] for p in prepared])
            timing["prepare"] = time.perf_counter() - started - timing["read"]
            sizes = [p[1] for p in prepared]
            del prepared
            return await batcher.infer(tensor, top_k, ticket, timing, convert=to_input), sizes

        try:
            outputs, sizes = await _unless_gone(request, run())
        finally:
            batcher.release(ticket)
        ctx = PreprocessContext([s for _, s in images], sizes, batched=True)
        results = model.postprocess(outputs, ctx, top_k)
        fields = model_fields(started)
        rows = [
            {"predictions": [{"label": p.label, "class_id": p.class_id, "score": p.score} for p in r.predictions]}
            for r in results
        ]
        headers = {"Server-Timing": server_timing(timing, fields["latency_ms"])}
        if request.state.multi:
            content = [{"filename": s, **row, **fields} for (_, s), row in zip(images, rows)]
            return JSONResponse(content, headers=headers)
        return JSONResponse({**rows[0], **fields}, headers=headers)

    # --- KServe / Open Inference Protocol v2 ---
    @app.get("/v2")
    async def server_metadata():
        return {"name": "resnet50", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not app.state.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = "1"):
        _check_model(name, version)
        return v2.model_metadata(model, MODEL_NAME)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1"):
        _check_model(name, version)
        return JSONResponse({"name": MODEL_NAME, "ready": app.state.ready}, status_code=200 if app.state.ready else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = "1"):
        _check_model(name, version)
        body = await read_body(request)
        ticket = batcher.admit()  # only now: a request still arriving holds no slot

        async def run():
            parsed = await in_pool(v2.parse_request, body, request.headers.get(v2.HEADER_LENGTH), model)
            return parsed, await batcher.infer(parsed.tensor, parsed.top_k, ticket)

        try:
            parsed, outputs = await _unless_gone(request, run())
        finally:
            batcher.release(ticket)
        content, headers, media_type = await in_pool(v2.encode_response, outputs, parsed, MODEL_NAME)
        return Response(content, headers=headers, media_type=media_type)

    # --- metrics and page ---
    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    # --- errors: always JSON {"error": ...}, never a 500 for bad input ---
    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ResNet50Error)
    async def bad_input(request: Request, exc: ResNet50Error):
        return error(400, str(exc))

    @app.exception_handler(ImageTooLarge)
    async def too_many_pixels(request: Request, exc: ImageTooLarge):
        return error(413, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge):
        return error(413, str(exc), {"Connection": "close"})

    @app.exception_handler(BodiesOverBudget)
    async def over_budget(request: Request, exc: BodiesOverBudget):
        return error(503, str(exc), {"Retry-After": "1", "Connection": "close"})

    @app.exception_handler(BodyTimeout)
    async def too_slow(request: Request, exc: BodyTimeout):
        return error(408, str(exc), {"Connection": "close"})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):
        if request.scope.get(REFUSED):  # the server answered it itself (503 on shutdown)
            return Response(status_code=503)
        client = request.client
        who = f"client {client.host}:{client.port}" if client else "a client"
        log(f"{who} went away {exc.when}: {request.method} {request.url.path}")
        return Response(status_code=GONE)  # nobody reads it; it tells AccountingApp what happened

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = (
            exc.detail
            if exc.status_code != 404 or exc.detail != "Not Found"
            else f"no such endpoint: {request.url.path}"
        )
        if exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return error(exc.status_code, str(message), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a server fault: still JSON (and logged)
        return error(500, f"internal server error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid request')}")

    return AccountingApp(app, metrics, counts)


def server_timing(timing: dict, total_ms: float) -> str:
    """The ``Server-Timing`` header (shown by browsers' network tools) of one classify request:
    where its time went, in ms."""
    parts = [f"{name};dur={timing[name] * 1000:.2f}" for name in ("read", "prepare", "queue") if name in timing]
    if "infer" in timing:
        parts.append(f'infer;dur={timing["infer"] * 1000:.2f};desc="batch of {timing["batch"]}"')
    return ", ".join([*parts, f"total;dur={total_ms:.2f}"])


def _check_model(name: str, version: str) -> None:
    if name != MODEL_NAME:
        raise StarletteHTTPException(404, f"unknown model {name!r}; this server has {MODEL_NAME!r}")
    if version != "1":
        raise StarletteHTTPException(404, f"model {MODEL_NAME!r} has no version {version!r}; it has '1'")


def _top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidInputError(f"top_k must be an integer in 1..1000, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise InvalidInputError(f"top_k must be in 1..1000, got {value}")
    return value


async def _images(request: Request, body: bytes) -> list[tuple[bytes, str]]:
    """The encoded images of a ``/v1/classify`` request, each with a name for messages."""
    request.state.multi = False
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        if not body:
            raise InvalidInputError("empty request body; send an image as the body or as multipart field 'file'")
        return [(body, "request body")]
    from starlette.formparsers import MultiPartException

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=256, max_fields=256)
    except MultiPartException as exc:
        raise InvalidInputError(f"malformed multipart body: {exc.message}") from None
    except StarletteHTTPException as exc:  # how Starlette reports a parse error inside an app
        raise InvalidInputError(f"malformed multipart body: {exc.detail}") from None
    uploads = form.getlist("file") + form.getlist("files")
    if not uploads:
        raise InvalidInputError("multipart body has no 'file' field; send the image as field 'file'")
    images = []
    for i, upload in enumerate(uploads):
        if isinstance(upload, str):
            raise InvalidInputError(f"multipart field 'file' #{i + 1} is text, not a file upload")
        images.append((await upload.read(), upload.filename or f"file #{i + 1}"))
    await form.close()
    request.state.multi = len(images) > 1
    return images


async def _collect(request: Request, limit: int, got: list[int], budget: BodyBudget) -> bytes:
    """The body, or :class:`BodyTooLarge` once it passes ``limit``; ``got[0]`` counts the bytes
    taken from ``budget``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise BodyTooLarge(limit, int(declared))
    chunks = []
    async for chunk in request.stream():
        if got[0] + len(chunk) > limit:
            raise BodyTooLarge(limit)
        budget.take(len(chunk))
        got[0] += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(request: Request, limit: int, seconds: float) -> None:
    """Read and drop what the client still sends (up to ``limit`` bytes and ``seconds``)."""

    async def drain():
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return

    with contextlib.suppress(Exception):  # timed out, or the client went away: nothing to answer
        await asyncio.wait_for(drain(), seconds)


async def _unless_gone(request: Request, work):
    """Await ``work`` unless the client disconnects first: then cancel it (the batcher drops its
    rows not yet run) and raise :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done() or watch.cancelled() or watch.exception() is not None or not watch.result():
        return await task  # answered, or this server cannot tell
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone("before its answer")


async def _disconnected(receive) -> bool:
    """True once the client disconnects; False if the server answers ``receive`` without waiting
    (after the body, ASGI servers block until the disconnect or the response)."""
    message = await receive()
    return message["type"] == "http.disconnect"


class AccountingApp:
    """ASGI wrapper: counts and times every HTTP request, by endpoint and status code."""

    def __init__(self, app: FastAPI, metrics: Metrics, counts: dict):
        self.app, self.metrics, self.counts = app, metrics, counts
        self.state = app.state
        self._endpoints = {"/", "/metrics", "/v1/classify", "/v2", "/v2/health/live", "/v2/health/ready"}

    def _endpoint(self, path: str) -> str:
        if path in self._endpoints:
            return path
        if path.startswith("/v2/models/"):
            return "/v2/models/{name}/infer" if path.endswith("/infer") else "/v2/models/{name}"
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        endpoint = self._endpoint(scope["path"])
        status = {"code": 500}
        self.counts["accepted"] += 1

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._done(endpoint, status["code"], started)

        await self.app(scope, receive, recording_send)

    def _done(self, endpoint: str, code: int, started: float) -> None:
        if code == GONE:
            self.counts["gone"] += 1
            self.metrics.disconnects.inc(endpoint)
            return
        self.counts["answered"] += 1
        self.metrics.requests.inc("http", endpoint, str(code))
        self.metrics.latency.observe(time.perf_counter() - started, "http", endpoint)
        if code >= 400:
            self.metrics.errors.inc(
                "http", endpoint, _ERROR_REASONS.get(code, "internal" if code >= 500 else "bad_input")
            )
