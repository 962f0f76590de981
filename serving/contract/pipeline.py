"""One model's pipeline: its hosting functions resolved from the user's module
(:mod:`~serving.contract.hosting_functions`), the model loaded once, and one request run
as three stages, ``encode(predict(decode(body)))``, each chosen once when the model is
loaded (the user's function, else a content handler or the framework).

Each function is optional and may take one extra trailing ``context``
argument (a :class:`~serving.contract.context.Context`). Missing ones fall back to the content
handlers (decode by Content-Type, encode by Accept) and to the framework
handler (``handlers/frameworks``): its loader for ``model_fn``, its forward
pass for ``predict_fn``. The framework comes from ``SERVING_FRAMEWORK``, else
the model directory's files, else the type of model ``model_fn`` returned; a
model of no framework is called as a plain function.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
import types
import typing as t

from handlers import frameworks
from handlers.content import (
    DecodedTooLarge,
    DecodeError,
    EncodeError,
    Registry,
    registering_into,
)
from handlers.frameworks import FrameworkHandler, SelectionError
from serving import errors
from serving.contract.context import Context
from serving.contract.hosting_functions import HOSTING_FUNCTIONS, UserFunction
from serving.contract.streams import STREAM_TYPES, Stream, close_quietly, is_stream
from serving.errors import (
    BadRequest,
    ModelError,
    NotAcceptable,
    ServingError,
    StartupError,
)
from serving.contract.negotiation import Negotiated
from serving.contract.signature import Signature, read_signature
from serving.runtime.batching import Batcher, batch_key

__all__ = ["ArchiveInfo", "DEFAULT_VERSION", "OwnedCode", "Pipeline"]

#: A model's version when nothing gives it one (``--model-version``'s default).
DEFAULT_VERSION = "1"

log = logging.getLogger(__name__)

class ArchiveInfo(t.Protocol):
    """What a TorchServe model archive's manifest tells of the model (the assembly's
    :class:`~serving.assembly.mar.Manifest`): the protocols show its name and version."""

    model_name: str
    version: str | None
    handler: str | None


class OwnedCode(t.Protocol):
    """Code a model owns (its own modules, or its archive's handler's), released when the
    model is unloaded."""

    def release(self) -> None: ...


class Pipeline:
    """One model and the functions that answer requests with it: a loaded model's record
    (its stages, and what the assembly gave it: its archive's manifest, the code it owns),
    each given when it is made."""

    def __init__(
        self,
        functions: t.Mapping[str, UserFunction],
        registry: Registry,
        *,
        model_dir: str,
        framework: str | None = None,
        detect_framework: bool = True,
        framework_settings: t.Mapping[str, t.Any] | None = None,
        source: str = "default handlers",
        debug_errors: bool = False,
        archive: ArchiveInfo | None = None,
        code: OwnedCode | None = None,
        version: str = DEFAULT_VERSION,
        signature: Signature | None = None,
    ) -> None:
        self.functions = dict(functions)
        #: Whether 500 bodies carry the exception's text (SERVING_DEBUG_ERRORS).
        self.debug_errors = debug_errors
        self.registry = registry
        self.source = source
        #: The framework's short name; ``None`` until known (or when there is none).
        self.framework_name = framework
        self.framework: FrameworkHandler | None = None
        #: Whether the type of model model_fn returns may choose the framework.
        self._detect_framework = detect_framework and framework is None
        #: The server's settings by name, for the framework handler to read its own.
        self._framework_settings = dict(framework_settings or {})
        #: This process's context: the master's until :meth:`enter_worker`.
        self.context = Context(model_dir=model_dir)
        self._threads: int | None = None
        self.model: t.Any = None
        self._loaded = False
        self._load_lock = threading.Lock()
        #: Joins concurrent requests' inputs into one predict; None: batching off.
        self.batcher: Batcher | None = None
        #: Called with each stage's name and duration in seconds (the server's metrics).
        self.observe_stage: t.Callable[[str, float], None] | None = None
        #: How long the model took to load, in seconds; None until loaded.
        self.load_seconds: float | None = None
        #: The code this model owns (a multi-model server's model's own modules, an
        #: archive's handler's), released when it is unloaded.
        self.code = code
        #: A TorchServe model archive's manifest (its name, version, handler); ``None``
        #: for a SageMaker model.
        self.archive = archive
        #: The model's version, as protocols that route by version name it: an archive's
        #: own, else the one it was given (``--model-version``).
        self.version = archive.version if archive is not None and archive.version else version
        #: The tensors the model takes and answers, when declared (or read from the model
        #: by its framework handler once loaded); ``None``: not known.
        self.signature = signature
        # The three stages, chosen when the model is loaded (see _choose_stages).
        self.decode: t.Callable[[bytes, Negotiated, Context], t.Any]
        self.predict: t.Callable[[t.Any, Context, float], t.Any]
        self.encode: t.Callable[[t.Any, Negotiated, Context], tuple[bytes, str]]
        self._predict_one: t.Callable[[t.Any, Context], t.Any]

    @classmethod
    def from_module(
        cls,
        module: types.ModuleType | None,
        registry: Registry,
        *,
        model_dir: str,
        default_accept: str,
        framework: str = "auto",
        framework_settings: t.Mapping[str, t.Any] | None = None,
        debug_errors: bool = False,
        archive: ArchiveInfo | None = None,
        code: OwnedCode | None = None,
        version: str = DEFAULT_VERSION,
    ) -> Pipeline:
        """Resolve the hosting functions of ``module``; check they fit together.

        :param framework: ``auto``, ``none`` or a name in ``handlers.frameworks.FRAMEWORKS``.
        """
        source = getattr(module, "__file__", None) or getattr(module, "__name__", "user code")
        functions = {}
        for name in HOSTING_FUNCTIONS:
            fn = getattr(module, name, None) if module is not None else None
            if fn is not None:
                functions[name] = UserFunction(name, fn, source)
        if "transform_fn" in functions:
            mixed = sorted({"input_fn", "predict_fn", "output_fn"} & functions.keys())
            if mixed:
                raise StartupError(
                    f"{source}: transform_fn replaces input_fn, predict_fn and output_fn, "
                    f"so it cannot be defined with {', '.join(mixed)}; keep one or the other"
                )
        name: str | None = None if framework in ("auto", "none") else framework
        if framework == "auto":
            try:
                name = frameworks.detect_from_files(model_dir)
            except SelectionError as exc:
                raise StartupError(str(exc)) from None
        if name is None and not functions.keys() & {"model_fn", "predict_fn", "transform_fn",
                                                    "stream_fn"}:
            looked = "no user script was found" if module is None else f"{source} has no model_fn"
            raise StartupError(
                f"nothing to serve: {looked}, and {model_dir} holds no files a framework handler "
                f"loads ({frameworks.files_help()}). Put an inference.py with a model_fn in "
                f"<model-dir>/code/, or set SERVING_FRAMEWORK"
            )
        pipeline = cls(functions, registry, model_dir=model_dir, framework=name,
                       detect_framework=framework == "auto",
                       framework_settings=framework_settings,
                       source=source, debug_errors=debug_errors, archive=archive, code=code,
                       version=version, signature=read_signature(model_dir))
        if pipeline.output_types is not None and default_accept not in pipeline.output_types:
            raise StartupError(
                f"default accept {default_accept} (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT) has no "
                f"encoder; registered: {', '.join(pipeline.output_types)}"
            )
        return pipeline

    # -- what the server can take and give ------------------------------------------

    @property
    def input_types(self) -> list[str] | None:
        """Content types the pipeline decodes, or ``None`` when user code decodes."""
        if self.functions.keys() & {"input_fn", "transform_fn"}:
            return None
        return self.registry.media_types

    @property
    def output_types(self) -> list[str] | None:
        """Media types the pipeline encodes, or ``None`` when user code encodes."""
        if self.functions.keys() & {"output_fn", "transform_fn"}:
            return None
        return self.registry.media_types

    @functools.cached_property
    def decoders(self) -> dict[str, t.Any] | None:
        """Media type → its decoder, as negotiation takes them (made once, at the first
        request: the model's own registrations are in by then); ``None`` when user code
        decodes."""
        types_ = self.input_types
        return {m: self.registry.get(m) for m in types_} if types_ is not None else None

    @functools.cached_property
    def encoders(self) -> dict[str, t.Any] | None:
        """Media type → its encoder, as negotiation takes them; ``None`` when user code
        encodes."""
        types_ = self.output_types
        return {m: self.registry.get(m) for m in types_} if types_ is not None else None

    @functools.cached_property
    def _json_encoder(self) -> t.Callable[[t.Any], bytes]:
        """How a streamed item that is neither bytes nor text is written: JSON, a line."""
        handler = self.registry.get("application/json")
        return handler.encode if handler is not None else _json_line

    # -- bidirectional streams -----------------------------------------------------

    @property
    def streams(self) -> bool:
        """Whether the user's module answers bidirectional streams itself (``stream_fn``)."""
        return "stream_fn" in self.functions

    def stream_context(self, headers: t.Mapping[str, str],
                       details: t.Mapping[str, t.Any]) -> Context:
        """The context of one stream: its upgrade request's headers, path and query."""
        return dataclasses.replace(self.context, headers=headers, **details)

    def stream(self, messages: t.Iterator[bytes | str], context: Context) -> t.Iterator[t.Any]:
        """``stream_fn(messages, model, context)``: what to send back, as it comes. What it
        raises reaches the host as it is (the host closes the stream with 1011)."""
        yield from self.functions["stream_fn"](messages, self.model, context=context)

    def session_hook(self, name: str, session: t.Any, headers: t.Mapping[str, str],
                     details: t.Mapping[str, t.Any]) -> None:
        """``open_session_fn`` or ``close_session_fn`` (``name``), if the module has it."""
        if name not in self.functions:
            return
        context = dataclasses.replace(self.context, headers=headers, session=session,
                                      **details)
        self._user("session", name, session, self.model, context=context)

    def stream_item(self, item: t.Any) -> bytes:
        """A stream_fn's item that is neither bytes nor text, as JSON (the JSON handler's)."""
        return self._json_encoder(item).rstrip(b"\n")

    def enable_batching(self, max_size: int, max_delay: float,
                        batcher_class: type[Batcher] = Batcher) -> None:
        """Join the inputs of concurrent requests into predict calls of up to ``max_size``
        rows, waiting at most ``max_delay`` seconds (see :mod:`serving.runtime.batching`).

        :param batcher_class: what gathers the requests: a thread of the worker's own, or
            (a Ray Serve replica) ``@serve.batch``.
        """
        self.batcher = batcher_class(lambda data: self._predict_one(data, self.context),
                                     max_size=max_size, max_delay=max_delay)

    @property
    def predicts_batches(self) -> bool:
        """Whether predict takes inputs joined along their first dimension: the framework's
        default predict does; a user's ``predict_fn`` when marked ``@serving.batched``."""
        if "transform_fn" in self.functions:
            return False
        if "predict_fn" in self.functions:
            return bool(getattr(self.functions["predict_fn"].fn, "batched", False))
        return self.framework is not None and self.framework.batchable

    # -- processes and loading -----------------------------------------------------

    def enter_worker(self, index: int, device: str, threads: int) -> None:
        """Called in each worker right after fork: its index, device and CPU threads."""
        self.context = dataclasses.replace(self.context, worker_index=index, device=device)
        self._threads = threads
        if self.framework is not None:  # preloaded: the handler exists already
            self.framework.configure_worker(device, threads)

    def _use_framework(self, name: str) -> None:
        try:
            self.framework = frameworks.load(name, self._framework_settings)
        except ImportError as exc:
            raise StartupError(
                f"the {name} handler needs {exc.name or 'its framework'}, which is not "
                f"installed: pip install 'serving-toolkit[{name}]'"
            ) from exc
        self.framework_name = name
        if self._threads is not None:  # in a worker already
            self.framework.configure_worker(self.context.device, self._threads)

    @property
    def ready(self) -> bool:
        return self._loaded

    def load_model(self) -> None:
        """Load the model once in this process; later calls do nothing.

        Runs ``model_fn`` (or the framework's loader) with this process's context,
        then places the model on its device.
        """
        with self._load_lock:
            if self._loaded:
                return
            context = self.context
            started = time.perf_counter()
            if self.framework_name is not None and self.framework is None:
                self._use_framework(self.framework_name)
            model_fn = self.functions.get("model_fn")
            try:
                if model_fn is not None:
                    log.info("loading the model: %s model_fn(%r)", self.source, context.model_dir)
                    with registering_into(self.registry):  # handlers it registers: its own
                        self.model = model_fn(context.model_dir, context=context)
                    if self._detect_framework:
                        name = frameworks.framework_of_model(self.model)
                        if name is not None:
                            self._use_framework(name)
                    if self.framework is not None:
                        self.model = self.framework.place(self.model, context.device)
                elif self.framework is not None:
                    log.info("loading the model with the %s handler from %s",
                             self.framework.name, context.model_dir)
                    self.model = self.framework.load(context.model_dir, context.device)
            except SelectionError as exc:
                raise StartupError(str(exc)) from None
            uses_model = not self.functions.keys() & {"predict_fn", "transform_fn", "stream_fn"}
            if uses_model and self.framework is None and not callable(self.model):
                raise StartupError(
                    f"{self.source}: model_fn returned a {type(self.model).__name__}, which "
                    f"cannot be called; define predict_fn(data, model) to say how to use it"
                )
            if self.signature is None and self.framework is not None:
                self._read_signature()
            self.load_seconds = time.perf_counter() - started
            log.info("model ready in %.2f s (framework: %s, device: %s)", self.load_seconds,
                     self.framework_name or "none", context.device)
            if self.batcher is not None:
                if self.predicts_batches:
                    log.info("dynamic batching: up to %d rows, waiting at most %g ms",
                             self.batcher.max_size, self.batcher.max_delay * 1000)
                else:
                    log.warning(
                        "SERVING_MAX_BATCH_SIZE is set, but %s: requests are not batched",
                        "transform_fn cannot take batches" if "transform_fn" in self.functions
                        else "predict_fn is not marked @serving.batched"
                        if "predict_fn" in self.functions
                        else "the model is called as a plain function (no framework)")
            self._choose_stages()
            self._loaded = True

    def _read_signature(self) -> None:
        """The tensors the framework handler reads from the loaded model, when the model
        directory declared none."""
        assert self.framework is not None
        found = self.framework.signature(self.model)
        if found is not None:
            try:
                self.signature = Signature.from_dict(found, f"the {self.framework.name} model")
            except ValueError as exc:
                log.warning("the model's tensors are not reported: %s", exc)

    def release(self) -> None:
        """Drop what the model holds beyond its objects: its own modules (multi-model)."""
        if self.code is not None:
            self.code.release()
            self.code = None

    # -- one request -------------------------------------------------------------

    def _run(self, stage: str, what: str, fn: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
        """Call user code or a handler, translating what it raises into our errors.

        :param stage: ``decode``, ``predict`` or ``encode``, for the 500 body.
        """
        try:
            return fn(*args)
        except ServingError:
            raise
        except DecodedTooLarge as exc:
            raise errors.DecodedTooLarge(exc.detail, exc.limit_bytes) from exc
        except DecodeError as exc:
            raise BadRequest(str(exc)) from exc
        except Exception as exc:
            log.exception("%s raised", what)
            kind = type(exc).__name__
            message = f"{what} raised {kind}"
            if self.debug_errors:
                message += f": {exc}"
            raise ModelError(message, stage=stage, exception=kind) from exc

    def _user(self, stage: str, name: str, *args: t.Any, context: Context) -> t.Any:
        return self._run(stage, name, lambda: self.functions[name](*args, context=context))

    def _timed(self, stage: str, fn: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
        """``fn(*args)``, its duration reported as ``stage`` when it returns."""
        observe = self.observe_stage
        if observe is None:
            return fn(*args)
        started = time.perf_counter()
        result = fn(*args)
        observe(stage, time.perf_counter() - started)
        return result

    def invoke(
        self, body: bytes, negotiated: Negotiated, headers: t.Mapping[str, str],
        deadline: float = float("inf"), details: t.Mapping[str, t.Any] | None = None,
        data: t.Any = None, raw: bool = False,
    ) -> tuple[t.Any, str]:
        """Answer one request: ``(response body, response media type)``, as
        ``encode(predict(decode(body)))`` with the stages chosen at load time.

        :param negotiated: what the request's Content-Type and Accept decided
            (:func:`serving.contract.negotiation.negotiate` with :attr:`decoders` and
            :attr:`encoders`): its decoder, and its encoders in the order they are tried.
        :param deadline: when the request's client stops waiting (``time.monotonic()``);
            a batch still to run leaves the request out past it.
        :param details: more :class:`Context` fields: the request id, the SageMaker
            headers, and ``reply``, the dict user code's answer headers go to.
        :param data: the input as a protocol decoded it (KServe's envelope for a TorchServe
            handler): the decode stage is skipped.
        :param raw: the prediction as it is, not encoded: ``(prediction, "")``.
        """
        context = dataclasses.replace(self.context, headers=headers,
                                      content_type=negotiated.content_type,
                                      accept=negotiated.accepts[0], **(details or {}))
        timed = self._timed
        if data is None:
            data = timed("decode", self.decode, body, negotiated, context)
        elif self.batcher is not None and self.predicts_batches:
            self.batcher.expect()  # as the decode stage would have announced it
        prediction = timed("predict", self.predict, data, context, deadline)
        if raw:
            return prediction, ""
        return timed("encode", self.encode, prediction, negotiated, context)

    # -- the three stages, chosen once --------------------------------------------

    def _choose_stages(self) -> None:
        """Set :attr:`decode`, :attr:`predict` and :attr:`encode` from the user's functions,
        the content handlers and the framework handler (known once the model is loaded),
        and the batcher: requests then run with no question of who does what.

        - ``decode(body, negotiated, context)`` → data;
        - ``predict(data, context, deadline)`` → prediction;
        - ``encode(prediction, negotiated, context)`` → (body, media type).

        ``transform_fn`` is the predict stage; decode passes the body on, and encode
        checks what it returned.
        """
        fns = self.functions
        if "transform_fn" in fns:
            self.decode = _pass_body
            self.predict = self._transform
            self.encode = self._transform_answer
            return
        self.decode = self._user_decode if "input_fn" in fns else self._handler_decode
        if "predict_fn" in fns:
            predict_one = self._user_predict
        elif self.framework is not None:
            predict_one = self._framework_predict
        else:
            predict_one = self._call_model
        self._predict_one = predict_one
        self.predict = lambda data, context, deadline: predict_one(data, context)
        self.encode = self._user_encode if "output_fn" in fns else self._handler_encode
        if self.batcher is not None and self.predicts_batches:
            self.decode, self.predict = self._batching_stages(self.decode, predict_one)

    def _batching_stages(self, decode: t.Callable[..., t.Any],
                         predict_one: t.Callable[..., t.Any]) -> tuple[t.Callable[..., t.Any],
                                                                       t.Callable[..., t.Any]]:
        """Decode and predict for batching: a request announces itself to the batcher when
        it starts decoding (a batch gathering now may wait for it), and its input joins
        a batch when it is rows of one; else it is predicted alone, as without batching."""
        batcher = self.batcher
        assert batcher is not None

        def decode_announced(body: bytes, negotiated: Negotiated, context: Context) -> t.Any:
            batcher.expect()
            try:
                return decode(body, negotiated, context)
            except BaseException:
                batcher.unexpect()
                raise

        def predict_batched(data: t.Any, context: Context, deadline: float) -> t.Any:
            key = batch_key(data)
            if key is None:
                batcher.unexpect()
                return predict_one(data, context)
            return batcher.submit(data, key, deadline)

        return decode_announced, predict_batched

    def _user_decode(self, body: bytes, negotiated: Negotiated, context: Context) -> t.Any:
        return self._user("decode", "input_fn", body, negotiated.content_type, context=context)

    def _handler_decode(self, body: bytes, negotiated: Negotiated, context: Context) -> t.Any:
        return self._run("decode", f"the {negotiated.content_type} decoder",
                         negotiated.decoder.decode, body)

    def _user_predict(self, data: t.Any, context: Context) -> t.Any:
        return self._user("predict", "predict_fn", data, self.model, context=context)

    def _framework_predict(self, data: t.Any, context: Context) -> t.Any:
        framework = self.framework
        assert framework is not None
        return self._run("predict", f"the {framework.name} model", framework.predict,
                         self.model, data, context.device)

    def _call_model(self, data: t.Any, context: Context) -> t.Any:
        return self._run("predict", "the model", self.model, data)

    def _transform(self, body: bytes, context: Context, deadline: float) -> t.Any:
        return self._user("predict", "transform_fn", self.model, body, context.content_type,
                          context.accept, context=context)

    def _transform_answer(self, result: t.Any, negotiated: Negotiated,
                          context: Context) -> tuple[bytes | Stream, str]:
        """transform_fn's encode stage: what it returned, checked."""
        return self._answer(result, negotiated.accepts[0], "transform_fn")

    def _user_encode(self, prediction: t.Any, negotiated: Negotiated,
                     context: Context) -> tuple[bytes, str]:
        accept = negotiated.accepts[0]
        result = self._user("encode", "output_fn", prediction, accept, context=context)
        return self._answer(result, accept, "output_fn")

    def _handler_encode(self, prediction: t.Any, negotiated: Negotiated,
                        context: Context) -> tuple[bytes, str]:
        """The first acceptable type whose encoder can write ``prediction``."""
        if is_stream(prediction):
            return self._stream(prediction, None, negotiated)
        refusals = []
        for media_type, encoder in negotiated.encoders:

            def attempt(encoder: t.Any = encoder) -> t.Any:
                try:
                    return encoder.encode(prediction)
                except EncodeError as exc:  # this type cannot hold it: try the next
                    return exc

            body = self._run("encode", f"the {media_type} encoder", attempt)
            if not isinstance(body, EncodeError):
                return body, media_type
            log.info("%s cannot hold this prediction: %s", media_type, body)
            refusals.append(f"{media_type}: {body}")
        negotiated.none_could_write(refusals)

    def _answer(self, result: t.Any, accept: str, name: str) -> tuple[bytes | Stream, str]:
        """What ``output_fn`` / ``transform_fn`` returned: a body or an iterator of chunks,
        or ``(that, content_type)``."""
        content_type = accept
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
            result, content_type = result
        if is_stream(result):
            return self._stream(result, content_type, None)
        return self._response(result, content_type, name)

    def _stream(self, items: t.Iterator[t.Any], media_type: str | None,
                negotiated: Negotiated | None) -> tuple[Stream, str]:
        """A :class:`Stream` of ``items``, its first chunk made now.

        :param media_type: the answer's type (from output_fn or transform_fn); ``None``:
            from the first item (:data:`STREAM_TYPES`), which ``negotiated`` must allow.
        """
        encode_json = self._json_encoder

        def chunk(item: t.Any) -> bytes:
            if isinstance(item, (bytes, bytearray, memoryview)):
                return bytes(item)
            if isinstance(item, str):
                return item.encode("utf-8")
            return encode_json(item) + b"\n"

        def rest() -> t.Iterator[bytes]:
            for item in items:
                yield chunk(item)

        try:
            first = self._run("predict", "the stream's first item", next, items, _END)
        except BaseException:
            close_quietly(items)
            raise
        if media_type is None:
            kind = bytes if isinstance(first, (bytes, bytearray, memoryview)) \
                else str if isinstance(first, str) else object
            media_type = STREAM_TYPES[kind]
            assert negotiated is not None
            try:
                negotiated.require(media_type, f"the model streams its answer as "
                                               f"{media_type.partition(';')[0]}")
            except NotAcceptable:
                close_quietly(items)
                raise
        if first is _END:
            return Stream(b"", iter(()), items), media_type
        return Stream(self._run("encode", "the stream's encoder", chunk, first), rest(), items), \
            media_type

    @staticmethod
    def _response(result: t.Any, content_type: str, name: str) -> tuple[bytes, str]:
        """A body ``output_fn`` / ``transform_fn`` returned, as bytes."""
        if isinstance(result, str):
            return result.encode("utf-8"), content_type
        if isinstance(result, (bytes, bytearray, memoryview)):
            return bytes(result), content_type
        raise ModelError(
            f"{name} returned a {type(result).__name__}; it must return bytes or str, an "
            f"iterator of chunks (streamed), or (one of those, content_type)"
        )


def _pass_body(body: bytes, negotiated: Negotiated, context: Context) -> bytes:
    """transform_fn's decode stage: it takes the body as it came."""
    return body


_END = object()


def _json_line(item: t.Any) -> bytes:
    """A stream item as JSON, for a registry with no application/json encoder."""
    return json.dumps(item).encode("utf-8")

