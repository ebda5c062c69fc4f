"""droptune's logging: one `configure()` for `serve`, `worker` and `up`, as text or JSON lines.

`DROPTUNE_LOG_FORMAT=json` writes one JSON object per line (`time`, `level`, `logger`,
`message`, and `study`, `trial`, `worker`, `request` where known, `exc` with a traceback), which
log shippers read without parsing rules; `text` (the default) keeps the classic line for people.
Every line of the process goes through the one handler: droptune's, uvicorn's (access and error),
Optuna's (its own handler would bypass it), Alembic's and Python warnings.

The ids come from two places, so that a line says which request, study or worker it is about
without every call site passing them:
- `bound(**ids)` (contextvars): for one context only, such as one API request among many
  running concurrently (starlette's thread pool copies the context into the route's thread);
- `bind_process(**ids)`: for every thread of the process, such as a worker's id and the study
  and trials it trains (its heartbeat thread's lines are about them too).
A field passed as `extra` on a call wins over both.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType, TracebackType
from urllib.parse import unquote_plus

FORMAT_ENV = "DROPTUNE_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
IDS = ("study", "trial", "worker", "request")
# uvicorn's loggers keep their own handlers only under its default log_config; serve passes
# log_config=None and they propagate here instead.
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "droptune_log_ids", default=_EMPTY
)
_process: Mapping[str, object] = _EMPTY  # replaced, never mutated: threads read it unlocked


def _merge(base: Mapping[str, object], ids: Mapping[str, object]) -> Mapping[str, object]:
    merged = {**base, **ids}
    return MappingProxyType({k: v for k, v in merged.items() if v is not None})


def bind_process(**ids: object) -> None:
    """Ids that every thread of this process logs with from now on; None removes one."""
    global _process
    _process = _merge(_process, ids)


Token = contextvars.Token[Mapping[str, object]]


def bind_context(**ids: object) -> Token:
    """Ids for the lines logged from now on in this context only (None removes one); give the
    token to `unbind_context` to go back."""
    return _context.set(_merge(_context.get(), ids))


def unbind_context(token: Token) -> None:
    _context.reset(token)


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    """Ids for the lines logged inside the block, in this context only (None removes one)."""
    token = bind_context(**ids)
    try:
        yield
    finally:
        unbind_context(token)


def current() -> dict[str, object]:
    """The ids a line logged here and now would carry."""
    return {**_process, **_context.get()}


class IdsFilter(logging.Filter):
    """Puts the known ids on each record (on the handler: it sees every logger's records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current()
        for key in IDS:
            if getattr(record, key, None) is None and key in ids:
                setattr(record, key, ids[key])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or traceback escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in IDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)  # ASCII: safe on any stderr encoding


def log_format(value: str | None = None) -> str:
    """The format asked for: `value`, else DROPTUNE_LOG_FORMAT, else text; ValueError if unknown."""
    fmt = (value if value is not None else os.environ.get(FORMAT_ENV, "text")).strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"{FORMAT_ENV}={fmt!r}: must be one of {', '.join(FORMATS)}")
    return fmt


class RedactTokens(logging.Filter):
    """A token never reaches a log line: uvicorn's access log writes every request's query
    string, where the dashboard's sign-in link carries one (`?token=`, or spelled with
    percent-escapes). Any query that mentions a token, however encoded, is left out whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            args = list(record.args)
            for i, arg in enumerate(args):
                if isinstance(arg, str) and "?" in arg:
                    path, _, query = arg.partition("?")
                    if "oken" in unquote_plus(query).lower():
                        args[i] = f"{path}?[query redacted]"
            record.args = tuple(args)
        return True


def configure(fmt: str | None = None, level: int = logging.INFO) -> str:
    """Send every log line of this process to stderr in one format; return the format.

    Replaces whatever handlers the root logger had, so calling it twice is harmless."""
    fmt = log_format(fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(IdsFilter())
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in UVICORN:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    _optuna_to_root()
    logging.captureWarnings(True)  # warnings.warn would write a bare line to stderr
    if fmt == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught
    return fmt


def _optuna_to_root() -> None:
    import optuna  # here: the client CLI imports this module and needs no optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):  # Ctrl-C is not an error worth a traceback line
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("droptune").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("droptune").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
