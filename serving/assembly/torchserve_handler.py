"""TorchServe handlers, run unchanged on our pipeline.

A model archive (:mod:`serving.assembly.mar`) names a handler: a module of the archive
with one class that has ``handle`` (TorchServe's ``BaseHandler`` subclasses), a
``module:function`` entry point, or one of TorchServe's built-in handlers by name
(``base_handler``, ``text_classifier``, ...). The handler, its context and its base
classes are TorchServe's own, from the ``torchserve`` package (the ``torchserve`` extra):
its loader finds the entry point, its ``Service`` makes the ``Context`` a handler gets in
``initialize(context)`` and ``handle(data, context)`` (``system_properties``,
``manifest``, ``model_yaml_config``, ``get_request_header``,
``set_response_content_type``, ``set_response_status``, ``request_ids``, ``metrics``).

What we do around it is what TorchServe's frontend and worker do, checked against
TorchServe 0.12 serving the same archives (tests/torchserve):

- **Requests in** (:func:`request_of`): a raw body is the item's ``body``; a
  ``multipart/form-data`` or ``application/x-www-form-urlencoded`` body gives one entry
  per field, by its name. A value whose content type is ``application/json`` comes as
  the decoded JSON (the bytes when it is not JSON), ``text/*`` as ``str``, anything else
  as ``bytes``. The item's headers are the request's, each field's content type under
  its name, and ``explain`` / ``url_path`` as TorchServe adds them.
- **Answers out** (:func:`answer_of`): ``bytes`` as they are, ``str`` in UTF-8, a tensor
  as ``torch.save`` writes it, anything else as ``json.dumps(value, indent=2)``; the
  status, reason and content type the handler set for that request.
- **One call at a time per worker**, as a TorchServe worker process makes them: the
  context is shared state (its ``request_processor`` is the call's), so calls take
  turns on a lock. With batching on (``batchSize`` in the archive's config, or
  ``--max-batch-size``), one call gets the batch, and each request its own answer.

Where we differ, on purpose: a handler that raises, or returns a non-list or the wrong
number of answers, fails its requests with our 500 naming the handler (TorchServe
answers 503 "Prediction failed"), and never the worker; an answer with no content type
set is sent as ``application/json`` when it was written as JSON (TorchServe sends none).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import logging
import os
import sys
import threading
import types
import typing as t
from urllib.parse import parse_qsl

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from handlers.content.base import DecodedTooLarge, DecodeError
from handlers.content.json import loads_bounded
from serving import errors
from serving.assembly.mar import ArchiveError, Manifest
from serving.errors import ModelError, StartupError
from serving.runtime.batching import Items
from serving.runtime.metrics import report_model_metric

if t.TYPE_CHECKING:
    from handlers.content import Registry
    from serving.contract.context import Context

__all__ = ["Answer", "HandlerCall", "HandlerRequest", "TorchServeModel", "answer_of", "hosting_module",
           "request_headers", "request_of"]

log = logging.getLogger(__name__)

#: Most fields one form body may have (werkzeug's default is 1000).
MAX_FORM_PARTS = 1000


def _missing_torchserve() -> StartupError:
    return StartupError("serving a TorchServe model archive needs the torchserve package: "
                        "pip install 'serving-toolkit[torchserve]'")


class RequestHeaders(dict):  # type: ignore[type-arg]
    """A request's headers as a handler reads them (``context.get_request_header``):
    looked up in any case, since HTTP names have none; listed in the case they are
    usually written in (``Content-Type``), as TorchServe passes what the client sent."""

    def __init__(self, items: t.Iterable[tuple[str, t.Any]]) -> None:
        super().__init__(items)
        self._lower = {key.lower(): key for key in self}

    def get(self, key: t.Any, default: t.Any = None) -> t.Any:
        if isinstance(key, str) and key not in self:
            key = self._lower.get(key.lower(), key)
        return super().get(key, default)

    def __getitem__(self, key: t.Any) -> t.Any:
        if isinstance(key, str) and key not in self.keys():
            key = self._lower.get(key.lower(), key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (
            isinstance(key, str) and key.lower() in self._lower)


class HandlerCall:
    """One call of the handler on ``rows`` a protocol made (TorchServe's KServe envelopes:
    v1's instances, v2's items), given to the pipeline as its input: the handler's answers
    come back as they are (a raw invocation)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[t.Any]) -> None:
        self.rows = rows


class HandlerRequest:
    """One HTTP request as a handler gets it: its item of ``data`` (name → value), its
    headers, its id."""

    __slots__ = ("row", "headers", "request_id")

    def __init__(self, row: dict[str, t.Any], headers: RequestHeaders,
                 request_id: str) -> None:
        self.row, self.headers, self.request_id = row, headers, request_id


def _value(value: bytes, content_type: str, max_decoded_bytes: int) -> t.Any:
    """A parameter's value as TorchServe's worker gives it to the handler; JSON held to
    the decoded-size limit (413) and the nesting bound (``--max-decoded-mb``)."""
    if content_type == "application/json":
        try:
            return loads_bounded(value, max_decoded_bytes)
        except DecodedTooLarge as exc:
            raise errors.DecodedTooLarge(exc.detail, exc.limit_bytes) from None
        except DecodeError:  # TorchServe logs a warning and passes the bytes on
            return value
    if content_type.startswith("text"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _header_name(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def request_of(body: bytes, headers: t.Mapping[str, str], request_id: str,
               max_form_bytes: int, max_decoded_bytes: int) -> HandlerRequest:
    """The handler's view of one request (see the module's text).

    :param headers: the request's headers (werkzeug's, from the WSGI environ).
    :param max_form_bytes: the most a form's fields (not its files) may hold in memory.
    :raises errors.BadRequest: a form body that cannot be parsed.
    """
    header = headers.get("Content-Type") or ""
    media_type, options = parse_options_header(header)
    media_type = media_type.lower()
    if media_type == "multipart/form-data":
        params = _multipart_fields(body, options.get("boundary", ""), max_form_bytes)
    elif media_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True,
                              max_num_fields=MAX_FORM_PARTS)
        except ValueError as exc:
            raise errors.BadRequest(f"the form body cannot be read: {exc}") from None
        params = [(name, value.encode("latin-1"), "") for name, value in pairs]
    else:
        params = [("body", body, media_type)]
    row: dict[str, t.Any] = {}
    items: list[tuple[str, t.Any]] = []
    for name, value, content_type in params:
        row[name] = _value(value, content_type, max_decoded_bytes)
        items.append((name, {"content-type": content_type}))
    return HandlerRequest(row, request_headers(headers, items), request_id)


def request_headers(headers: t.Mapping[str, str],
                    fields: list[tuple[str, t.Any]] | None = None) -> RequestHeaders:
    """A request's headers as a handler sees them, in TorchServe's order: each field's
    content type, explain, the request's headers, url_path."""
    items = list(fields or [])
    items.append(("explain", "False"))
    items.extend((_header_name(name), value) for name, value in headers.items())
    items.append(("url_path", ""))
    return RequestHeaders(items)


def _multipart_fields(body: bytes, boundary: str,
                      max_form_bytes: int) -> list[tuple[str, bytes, str]]:
    """A multipart/form-data body's parts, in order, as TorchServe's frontend (Netty) makes
    them: ``(name, value, content type)``, the content type of a file part only."""
    if not boundary:
        raise errors.BadRequest("a multipart/form-data body needs the boundary parameter of "
                                "its Content-Type")
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_form_bytes,
                               max_parts=MAX_FORM_PARTS)
    params: list[tuple[str, bytes, str]] = []
    event: t.Any = None
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        name, content_type, chunks = "", "", []
        while True:
            event = decoder.next_event()
            if isinstance(event, (Epilogue, NeedData)):
                break
            if isinstance(event, File):
                name, chunks = event.name, []
                content_type = event.headers.get("Content-Type", "").partition(";")[0]
                content_type = content_type.strip().lower()
            elif isinstance(event, Field):
                name, content_type, chunks = event.name, "", []
            elif isinstance(event, Data):
                chunks.append(event.data)
                if not event.more_data:
                    params.append((name, b"".join(chunks), content_type))
    except Exception as exc:  # werkzeug's ValueError, RequestEntityTooLarge
        raise errors.BadRequest(f"the multipart/form-data body cannot be read: "
                                f"{getattr(exc, 'description', None) or exc}") from None
    if not isinstance(event, Epilogue):
        raise errors.BadRequest("the multipart/form-data body ends before its closing "
                                "boundary")
    return params


class Answer:
    """One request's answer from a handler: its body, and what the handler set for it."""

    __slots__ = ("body", "content_type", "status", "phrase", "headers")

    def __init__(self, body: bytes, content_type: str, status: int, phrase: str,
                 headers: dict[str, str]) -> None:
        self.body, self.content_type = body, content_type
        self.status, self.phrase, self.headers = status, phrase, headers


def answer_of(value: t.Any, processor: t.Any, handler: str) -> Answer:
    """A handler's answer to one request, written as TorchServe writes it, with the
    status, content type and headers the handler set on ``processor`` (its
    ``RequestProcessor``)."""
    json_written = False
    if isinstance(value, (bytes, bytearray)):
        body = bytes(value)
    elif isinstance(value, str):
        body = value.encode("utf-8")
    elif type(value).__module__ == "torch" and type(value).__name__ == "Tensor":
        import torch

        buffer = io.BytesIO()
        torch.save(value, buffer)
        body = buffer.getvalue()
    else:
        try:
            body = json.dumps(value, indent=2).encode("utf-8")
        except (TypeError, ValueError):
            raise ModelError(f"the {handler} handler answered a {type(value).__name__}, "
                             f"which cannot be written as JSON", stage="encode") from None
        json_written = True
    set_headers = dict(processor.get_response_headers())
    content_type = set_headers.pop("content-type", None) or None
    set_headers.pop("ts_stream_next", None)  # TorchServe's streaming marker, not a header
    if content_type is None:
        content_type = "application/json" if json_written else "application/octet-stream" \
            if isinstance(value, (bytes, bytearray)) else "text/plain; charset=utf-8"
    status = processor.get_response_status_code()
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ModelError(f"the {handler} handler set the status {status!r}, not an HTTP "
                         f"status code", stage="encode")
    phrase = processor.get_response_status_phrase() or ""
    headers = {}
    for name, text in set_headers.items():
        if (isinstance(name, str) and isinstance(text, str) and name.isascii()
                and name.replace("-", "").isalnum() and "\r" not in text and "\n" not in text):
            headers[name] = text
        else:
            log.warning("the %s handler set a response header %r that cannot be sent; left "
                        "out", handler, name)
    if not (phrase.isascii() and phrase.isprintable()):
        phrase = ""
    return Answer(body, content_type, status, phrase, headers)


class _Turns:
    """Mutual exclusion in arrival order: a worker's prediction threads call a handler
    one at a time, first come first served (a bare lock wakes any waiter, and under load
    some wait many turns: the tail latency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the holder before us, which hands its turn over

    def __exit__(self, *_: t.Any) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # still held: now the next one's
            else:
                self._held = False


class TorchServeModel:
    """One archive's handler, initialised in this process: TorchServe's ``Service`` (its
    context and entry point), called one batch at a time."""

    def __init__(self, service: t.Any, name: str, debug_errors: bool,
                 code: t.Any = None) -> None:
        self.service = service
        #: The handler module's :class:`~serving.assembly.user_code.UserCode` (``None``:
        #: one of TorchServe's built-ins).
        self.code = code
        self.name = name
        self.debug_errors = debug_errors
        self._turn = _Turns()

    def handle(self, requests: Items) -> Items:
        """``handle(data, context)`` on the requests (one, or a batch): one
        :class:`Answer` each, in order."""
        from ts.context import RequestProcessor

        processors = [RequestProcessor(request.headers) for request in requests]
        with self._turn:
            answers = self._call([r.row for r in requests], processors,
                                 [r.request_id for r in requests])
            if len(answers) != len(requests):
                raise ModelError(f"the {self.name} handler answered {len(answers)} times to "
                                 f"{len(requests)} request(s)", stage="predict")
            return Items(answer_of(answer, processor, self.name)
                         for answer, processor in zip(answers, processors))

    def handle_raw(self, data: list[t.Any], headers: t.Mapping[str, str],
                   request_id: str) -> list[t.Any]:
        """``handle(data, context)`` for one request whose ``data`` a protocol made (as
        TorchServe's KServe envelopes make it): the handler's answers as they are."""
        from ts.context import RequestProcessor

        with self._turn:
            return self._call(data, [RequestProcessor(request_headers(headers))],
                              [request_id])

    def _call(self, data: list[t.Any], processors: list[t.Any],
              ids: list[str]) -> list[t.Any]:
        """The entry point on ``data``, the context made for this call (its turn held)."""
        from ts.utils.util import PredictionException

        context = self.service.context
        by_index = dict(enumerate(ids))
        context.request_ids = by_index
        context.request_processor = processors
        context.cl_socket = None
        if context.metrics is not None:
            context.metrics.request_ids = by_index
        try:
            answers = self.service._entry_point(data, context)
        except PredictionException as exc:  # the handler's own status and message
            raise _prediction_error(exc) from exc
        except MemoryError as exc:
            raise errors.InsufficientStorage("out of memory while the handler ran") from exc
        except Exception as exc:
            log.exception("the %s handler raised", self.name)
            kind = type(exc).__name__
            message = f"the {self.name} handler raised {kind}"
            if self.debug_errors:
                message += f": {exc}"
            raise ModelError(message, stage="predict", exception=kind) from exc
        if not isinstance(answers, list):
            raise ModelError(f"the {self.name} handler answered a {type(answers).__name__}, "
                             f"not a list of one answer per request", stage="predict")
        return answers


def _prediction_error(exc: t.Any) -> errors.ServingError:
    """A handler's ``PredictionException(message, error_code)``, as our error of that code."""
    code = exc.error_code if isinstance(exc.error_code, int) else 500
    if 400 <= code <= 499:
        return errors.ClientError(str(exc.message), status_code=code)
    return errors.ServingError(str(exc.message), status_code=code if 500 <= code <= 599
                               else 500)


# -- loading ------------------------------------------------------------------------

#: Start-up imports of handlers and their model files: one at a time (sys.path changes).
_imports = threading.Lock()


@contextlib.contextmanager
def _archive_on_path(directory: str, manifest: Manifest, keep: bool) -> t.Iterator[None]:
    """While a handler initialises: the archive's directory first on ``sys.path``, and a
    module of the name of its ``modelFile`` that another archive loaded forgotten, so that
    TorchServe's ``importlib.import_module("model")`` finds this archive's ``model.py``.

    :param keep: leave the directory on ``sys.path`` (one archive: as TorchServe's worker
        runs with it there), else take it off again.
    """
    names = [os.path.splitext(os.path.basename(manifest.model_file))[0]] \
        if manifest.model_file else []
    root = os.path.realpath(directory) + os.sep
    with _imports:
        for name in names:
            module = sys.modules.get(name)
            origin = getattr(module, "__file__", None) or ""
            if module is not None and not os.path.realpath(origin).startswith(root):
                del sys.modules[name]
        sys.path.insert(0, directory)
        try:
            yield
        finally:
            if not keep:
                with contextlib.suppress(ValueError):
                    sys.path.remove(directory)


def _handler_module(directory: str, manifest: Manifest, registry: Registry,
                    private: str | None) -> tuple[types.ModuleType, str | None, t.Any]:
    """The handler's module, its function's name (``module:function``), and the
    :class:`~serving.assembly.user_code.UserCode` it was loaded as (``None``: a built-in)."""
    from serving.assembly.user_code import load_user_code

    handler = manifest.handler
    if not handler:
        raise ArchiveError(f"{manifest.model_name}: the manifest names no handler")
    module_name, _, function = handler.partition(":")
    file = os.path.basename(module_name if module_name.endswith(".py") else module_name + ".py")
    path = os.path.join(directory, file)
    if os.path.isfile(path):
        code = load_user_code(path, registry, private=private)
        return code.module, function or None, code
    try:
        return importlib.import_module(f"ts.torch_handler.{module_name}"), function or None, None
    except ModuleNotFoundError as exc:
        if exc.name == "ts":
            raise _missing_torchserve() from None
        if exc.name != f"ts.torch_handler.{module_name}":
            raise StartupError(f"{manifest.model_name}: TorchServe's {module_name} handler "
                               f"needs {exc.name}, which is not installed") from None
        raise ArchiveError(f"{manifest.model_name}: the handler {handler!r} is neither a file "
                           f"of the archive nor one of TorchServe's built-in handlers") from None


def load_handler(name: str, directory: str, manifest: Manifest, registry: Registry, *,
                 device: str, batch_size: int, private: str | None,
                 debug_errors: bool) -> TorchServeModel:
    """Import the archive's handler and run its ``initialize(context)``, as TorchServe's
    worker does.

    :param private: load the handler's module in a namespace of its own (several
        archives in one server), else as the process's own.
    :raises StartupError: what stops it (an exception of ``initialize`` propagates).
    """
    try:
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.model_loader import TsModelLoader
        from ts.service import Service
    except ImportError:
        raise _missing_torchserve() from None
    import ts

    module, function, code = _handler_module(directory, manifest, registry, private)
    loader = TsModelLoader()
    try:
        if hasattr(module, function or "handle"):
            entry_point, initialize = loader._get_function_entry_point(module,
                                                                       function or "handle")
        elif function is not None:
            raise StartupError(f"{manifest.model_name}: the handler module has no {function}")
        else:
            entry_point, initialize = loader._get_class_entry_point(module)
    except ValueError as exc:  # not one class with handle, as TorchServe's loader says
        raise StartupError(f"{manifest.model_name}: {exc}") from None
    metrics = _counted(MetricsCacheYamlImpl, name)(
        config_file_path=os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml"))
    metrics.model_name = name  # the ModelName dimension of its log lines
    metrics.initialize_cache()
    gpu_id = int(device.partition(":")[2] or 0) if device.startswith("cuda") else None
    service = Service(name, directory, manifest.raw, entry_point, gpu_id, batch_size, True,
                      metrics)
    with _archive_on_path(directory, manifest, keep=private is None):
        initialize(service.context)
    return TorchServeModel(service, name, debug_errors, code)


def _counted(cache_class: type, model: str) -> type:
    """TorchServe's metrics cache, each metric it makes also counted in our /metrics."""

    class CountedCache(cache_class):  # type: ignore[misc, valid-type]
        def add_metric_to_cache(self, metric_name: str, unit: str, *args: t.Any,
                                **kwargs: t.Any) -> t.Any:
            metric = super().add_metric_to_cache(metric_name, unit, *args, **kwargs)
            emit = metric.emit_metrics

            def emit_and_count(request_id: str, value: float, dimensions: str) -> None:
                # Besides TorchServe's log lines: our /metrics (the app says where).
                report_model_metric(model, metric_name, unit, metric.metric_type.name, value)
                emit(request_id, value, dimensions)

            metric.emit_metrics = emit_and_count
            return metric

    return CountedCache


def hosting_module(name: str, directory: str, manifest: Manifest, registry: Registry, *,
                   batch_size: int, max_form_bytes: int, max_decoded_bytes: int,
                   private: str | None,
                   debug_errors: bool) -> types.SimpleNamespace:
    """The hosting functions that serve an archive through the pipeline: ``model_fn``
    initialises the handler, ``input_fn`` makes the handler's request,
    ``predict_fn`` (batched) calls it, ``output_fn`` sends its answer; and ``release()``,
    which forgets the handler's modules (an archive unloaded)."""
    loaded: list[TorchServeModel] = []

    def model_fn(model_dir: str, context: Context) -> TorchServeModel:
        model = load_handler(name, directory, manifest, registry, device=context.device,
                             batch_size=batch_size, private=private, debug_errors=debug_errors)
        loaded.append(model)
        return model

    def release() -> None:
        while loaded:
            code = loaded.pop().code
            if code is not None:
                code.release()

    def input_fn(body: bytes, content_type: str, context: Context) -> Items:
        return Items([request_of(body, context.headers, context.request_id or "",
                                 max_form_bytes, max_decoded_bytes)])

    def predict_fn(data: Items | HandlerCall, model: TorchServeModel,
                   context: Context) -> Items | list[t.Any]:
        if isinstance(data, HandlerCall):  # a protocol's envelope (KServe's): one call
            return model.handle_raw(data.rows, context.headers, context.request_id or "")
        return model.handle(data)

    predict_fn.batched = True  # type: ignore[attr-defined]

    def output_fn(prediction: Items, accept: str, context: Context) -> tuple[bytes, str]:
        answer: Answer = prediction[0]
        if answer.status != 200 or answer.phrase:
            context.reply["status"] = f"{answer.status} {answer.phrase}".rstrip()
        if answer.headers:
            context.reply["headers"] = answer.headers
        return answer.body, answer.content_type

    return types.SimpleNamespace(
        __file__=os.path.join(directory, manifest.handler or "handler"),
        __name__=f"torchserve archive {name}",
        model_fn=model_fn, input_fn=input_fn, predict_fn=predict_fn, output_fn=output_fn,
        release=release)
