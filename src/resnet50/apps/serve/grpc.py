"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` beside the HTTP server.

``resnet50 serve --grpc-port PORT`` runs a ``grpc.aio`` server in uvicorn's own event loop, on
the HTTP app's state: the same batcher (so the same model streams, ``--max-batch`` and
``--max-queue``), decode threads, metrics (``protocol="grpc"``), request counts and SIGTERM
drain. One loop means no locks between the protocols and no second copy of anything.

RPCs: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer (typed
``contents`` or ``raw_input_contents``; the answer is raw when the request was). Every other
RPC of the service answers UNIMPLEMENTED. Status codes: INVALID_ARGUMENT for a bad tensor or
parameter, NOT_FOUND for an unknown model or version, RESOURCE_EXHAUSTED when ``--max-queue``
requests are in flight (or, from gRPC itself, a message over ``--grpc-max-message-mb``),
UNAVAILABLE while draining.

Messages and servicer base class: the generated ``service_pb2`` / ``service_pb2_grpc`` that
``tritonclient[grpc]`` ships, not a ``.proto`` of our own. Triton's ``grpc_service.proto`` is
the superset of the KServe spec (same package, service and field numbers) that the clients our
users run are built from; NVIDIA regenerates it for each grpcio/protobuf release, so the
generated code keeps passing protobuf's runtime-version checks without a ``protoc`` step in our
build or generated code in our tree; and the same package is the client the tests use, so the
wire format cannot drift between them. The cost is a dependency on tritonclient (numpy,
python-rapidjson, packaging), a client library, for its messages.

Needs the ``grpc`` extra; imported only when ``--grpc-port`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass

import numpy as np

from resnet50.apps.serve import v2
from resnet50.apps.serve.batcher import Overloaded
from resnet50.apps.serve.tensors import (
    byte_size,
    check_finite_outputs,
    check_input,
    check_outputs,
    check_top_k,
    datatype,
    tensor_from_bytes,
    tensor_from_values,
)
from resnet50.core.errors import BackendUnavailableError, InvalidInputError, ResNet50Error

MODEL_NAME = "resnet50"
SERVICE = "inference.GRPCInferenceService"
IMPLEMENTED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
# Once no accepted RPC runs, gRPC gets this long to send the last answers. A call that reached it
# as it stopped, which no handler took, is cancelled then (gRPC would hold it for the whole grace).
FINAL_GRACE_S = 1.0
# The typed contents field of each datatype (FP16 has none: it travels raw only).
TYPED_FIELDS = {"FP32": "fp32_contents", "UINT8": "uint_contents", "INT32": "int_contents", "INT64": "int64_contents"}
_CONTENT_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)
_REASONS = {  # gRPC status -> the reason label of resnet50_request_errors_total (as HTTP's)
    "INVALID_ARGUMENT": "bad_input",
    "NOT_FOUND": "not_found",
    "UNIMPLEMENTED": "not_found",
    "RESOURCE_EXHAUSTED": "overloaded",
    "UNAVAILABLE": "draining",
}


def load_grpc():
    """``grpc`` and tritonclient's generated ``(service_pb2, service_pb2_grpc)``, or one clear error."""
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError as exc:
        missing = "grpcio" if (exc.name or "").split(".")[0] == "grpc" else "tritonclient[grpc]"
        raise BackendUnavailableError(f"--grpc-port needs {missing}: pip install 'resnet50[grpc]'") from None
    except RuntimeError as exc:  # tritonclient's: no grpc support installed, or a grpcio older than its code
        message = " ".join(str(exc).split())
        raise BackendUnavailableError(f"--grpc-port: {message}: pip install -U 'resnet50[grpc]'") from None
    return grpc, service_pb2, service_pb2_grpc


class _Refused(Exception):
    """An RPC answered with ``code`` (a ``grpc.StatusCode`` name) and this message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Parsed:
    tensor: np.ndarray
    outputs: list[str]
    top_k: int
    raw: bool
    input_name: str


def parse_infer(request, model) -> _Parsed:
    """A ``ModelInferRequest`` -> the validated input tensor, the outputs to return, ``top_k``
    and whether to answer raw; the same checks as HTTP v2 (:mod:`.tensors`)."""
    inputs = request.inputs
    spec = inputs[0] if len(inputs) == 1 else None
    shape = check_input(
        model,
        len(inputs),
        spec.name if spec else None,
        spec.datatype if spec else None,
        list(spec.shape) if spec else None,
    )
    name, dtype = spec.name, model.input_dtype
    raw = len(request.raw_input_contents) > 0
    if raw:
        if len(request.raw_input_contents) != 1:
            raise InvalidInputError(f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input")
        if spec.HasField("contents"):
            raise InvalidInputError(f"input {name!r} has both contents and raw_input_contents; send one of them")
        data = request.raw_input_contents[0]
        need = byte_size(shape, dtype)
        if len(data) != need:
            raise InvalidInputError(
                f"input {name!r}: raw_input_contents has {len(data)} bytes, shape {shape} needs {need}"
            )
        tensor = tensor_from_bytes(name, shape, data, dtype)
    else:
        field = TYPED_FIELDS.get(spec.datatype)
        if field is None:
            raise InvalidInputError(f"input {name!r}: {spec.datatype} has no typed contents; send raw_input_contents")
        others = [f for f in _CONTENT_FIELDS if f != field and len(getattr(spec.contents, f))]
        if others:
            raise InvalidInputError(f"input {name!r}: {spec.datatype} values go in contents.{field}, got {others[0]}")
        values = np.asarray(getattr(spec.contents, field), dtype=np.float64)
        tensor = tensor_from_values(name, shape, values, dtype, f"contents.{field}")
    for out in request.outputs:
        if "classification" in out.parameters:
            raise InvalidInputError(f"output {out.name!r}: the classification extension is not supported")
    outputs = check_outputs(model, [out.name for out in request.outputs])
    top_k = 5
    if "top_k" in request.parameters:
        param = request.parameters["top_k"]
        choice = param.WhichOneof("parameter_choice")
        top_k = getattr(param, choice) if choice else None
    return _Parsed(tensor, outputs, check_top_k(top_k), raw, name)


def encode_infer(pb, outputs: dict[str, np.ndarray], parsed: _Parsed, request_id: str):
    """Model outputs -> ``ModelInferResponse``: ``raw_output_contents`` when the request was raw
    (or an output's datatype has no typed field), typed contents otherwise."""
    check_finite_outputs(outputs, parsed.outputs, parsed.input_name, parsed.tensor)
    values = {name: np.ascontiguousarray(outputs[name]) for name in parsed.outputs}
    raw = parsed.raw or any(datatype(v.dtype) not in TYPED_FIELDS for v in values.values())
    response = pb.ModelInferResponse(model_name=MODEL_NAME, model_version="1", id=request_id)
    for name, value in values.items():
        entry = response.outputs.add(name=name, datatype=datatype(value.dtype), shape=value.shape)
        if raw:
            response.raw_output_contents.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
        else:
            getattr(entry.contents, TYPED_FIELDS[entry.datatype]).extend(value.ravel().tolist())
    return response


class GrpcFrontend:
    """The gRPC server of one app: started in the app's event loop once its batcher runs,
    drained on SIGTERM (:meth:`drain`), stopped before the batcher (:meth:`stop`)."""

    def __init__(self, state, host: str, port: int, *, max_message_mb: float, grace: float, log=None):
        self.grpc, self.pb, self.pb_grpc = load_grpc()
        self.state, self.host, self.requested_port = state, host, port
        self.max_message = int(max_message_mb * 1024 * 1024)
        self.grace = grace
        self.port: int | None = None
        self.draining = False
        self.inflight = 0  # RPCs being handled; the port closes once a drain brings this to 0
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future | None = None
        self._idle: asyncio.Event | None = None  # set when a drain has no RPC left in flight
        self._log = log or (lambda message: print(f"resnet50 serve: {message}", file=sys.stderr, flush=True))

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if self.port is not None else self.requested_port}"

    async def start(self) -> None:
        """Listen on the port (0: a free one) and serve; InvalidInputError if the port is taken."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        options = [
            ("grpc.max_receive_message_length", self.max_message),
            ("grpc.max_send_message_length", self.max_message),
            ("grpc.so_reuseport", 0),  # a taken port is an error, never a silently shared one
        ]
        server = self.grpc.aio.server(options=options)
        self.pb_grpc.add_GRPCInferenceServiceServicer_to_server(_servicer(self), server)
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise InvalidInputError(f"cannot listen on {self.address} for gRPC: {exc}") from None
        if not self.port:  # older grpcio reports a failed bind as port 0
            raise InvalidInputError(f"cannot listen on {self.address} for gRPC: address in use or not available")
        await server.start()
        self._server = server
        self._log(f"gRPC listening on {self.address} ({SERVICE}, max message {self.max_message / 1024 / 1024:g} MB)")

    def drain(self) -> None:
        """From the signal handler: answer new inference RPCs UNAVAILABLE, let the accepted ones
        finish, then stop gRPC (which tells clients to go away and closes the port).

        The port stays open while accepted RPCs run, so that a request sent meanwhile gets this
        server's UNAVAILABLE rather than being cut off by gRPC's own shutdown: gRPC cancels a
        call that reaches a stopping server before its handler runs (the client sees CANCELLED)."""
        self.draining = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_when_idle)

    def _stop_when_idle(self) -> None:
        if self.inflight == 0:
            self._idle.set()
            self._begin_stop(FINAL_GRACE_S)

    def _begin_stop(self, grace: float) -> None:
        if self._stopping is None and self._server is not None:
            self._stopping = asyncio.ensure_future(self._server.stop(grace))

    async def stop(self) -> None:
        """Wait until every accepted RPC is answered (at most ``grace`` s), then close the port."""
        if self._server is None:
            return
        self.draining = True
        self._stop_when_idle()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.grace)
        self._begin_stop(0)  # past the grace period: gRPC cancels what still runs
        await self._stopping

    # --- RPCs ---
    def _check_model(self, name: str, version: str) -> None:
        if name != MODEL_NAME:
            raise _Refused("NOT_FOUND", f"unknown model {name!r}; this server has {MODEL_NAME!r}")
        if version not in ("", "1"):
            raise _Refused("NOT_FOUND", f"model {MODEL_NAME!r} has no version {version!r}; it has '1'")

    def _ready(self) -> bool:
        return bool(self.state.ready) and not self.draining

    async def server_live(self, request):
        return self.pb.ServerLiveResponse(live=True)

    async def server_ready(self, request):
        return self.pb.ServerReadyResponse(ready=self._ready())

    async def model_ready(self, request):
        self._check_model(request.name, request.version)
        return self.pb.ModelReadyResponse(ready=self._ready())

    async def server_metadata(self, request):
        return self.pb.ServerMetadataResponse(name=MODEL_NAME, version="1", extensions=[])

    async def model_metadata(self, request):
        """The HTTP ``GET /v2/models/resnet50`` answer (the message has no ``parameters``)."""
        self._check_model(request.name, request.version)
        meta = v2.model_metadata(self.state.batcher.model, MODEL_NAME)
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def model_infer(self, request):
        self._check_model(request.model_name, request.model_version)
        if self.draining:
            raise _Refused("UNAVAILABLE", "server is shutting down; send new requests elsewhere")
        batcher, model = self.state.batcher, self.state.batcher.model
        ticket = batcher.admit()
        try:
            if request.raw_input_contents:  # a byte copy: cheaper here than a hop to the decode threads
                parsed = parse_infer(request, model)
            else:  # a list of numbers per value: off the event loop
                parsed = await asyncio.get_running_loop().run_in_executor(self.state.pool, parse_infer, request, model)
            outputs = await batcher.infer(parsed.tensor, parsed.top_k, ticket)
        finally:
            batcher.release(ticket)
        return encode_infer(self.pb, outputs, parsed, request.id)

    async def answer(self, method: str, handler, request, context):
        """Run one RPC: count and time it like an HTTP request, map errors to status codes."""
        started = time.perf_counter()
        counts, metrics = self.state.counts, self.state.metrics
        counts["accepted"] += 1
        self.inflight += 1
        code, message = "OK", ""
        try:
            return await handler(request)
        except _Refused as exc:
            code, message = exc.code, str(exc)
        except Overloaded as exc:
            code, message = "RESOURCE_EXHAUSTED", str(exc)
        except ResNet50Error as exc:
            code, message = "INVALID_ARGUMENT", str(exc)
        except asyncio.CancelledError:  # the client went away or its deadline passed: nobody to answer
            code = "CANCELLED"
            counts["gone"] += 1
            metrics.disconnects.inc(method)
            raise
        except Exception as exc:
            code, message = "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"
            self._log(f"gRPC {method}: {message}")
        finally:
            self.inflight -= 1
            if self.draining:
                self._stop_when_idle()
            if code != "CANCELLED":  # as over HTTP, a request whose client went away is not "answered"
                counts["answered"] += 1
                metrics.requests.inc("grpc", method, code)
                metrics.latency.observe(time.perf_counter() - started, "grpc", method)
                if code != "OK":
                    metrics.errors.inc("grpc", method, _REASONS.get(code, "internal"))
        await context.abort(getattr(self.grpc.StatusCode, code), message)


def _servicer(frontend: GrpcFrontend):
    """A ``GRPCInferenceServiceServicer`` whose implemented RPCs call ``frontend`` and whose
    other RPCs (model repository, statistics, shared memory, streaming...) answer UNIMPLEMENTED."""
    base = frontend.pb_grpc.GRPCInferenceServiceServicer
    handlers = {
        "ServerLive": frontend.server_live,
        "ServerReady": frontend.server_ready,
        "ModelReady": frontend.model_ready,
        "ServerMetadata": frontend.server_metadata,
        "ModelMetadata": frontend.model_metadata,
        "ModelInfer": frontend.model_infer,
    }

    def unimplemented(method: str):
        async def refuse(request):
            raise _Refused(
                "UNIMPLEMENTED", f"{SERVICE}/{method} is not implemented; this server has {', '.join(IMPLEMENTED)}"
            )

        return refuse

    def rpc(method: str, handler):
        async def call(self, request, context):
            return await frontend.answer(method, handler, request, context)

        call.__name__ = method
        return call

    methods = [name for name in vars(base) if name[:1].isupper() and callable(getattr(base, name))]
    namespace = {name: rpc(name, handlers.get(name) or unimplemented(name)) for name in methods}
    return type("Servicer", (base,), namespace)()
