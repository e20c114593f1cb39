"""Errors of the speech server, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every message is one line that says what to change. ``type`` follows OpenAI's values (``invalid_request_error``,
``authentication_error``, ``rate_limit_error``, ``server_error``, plus ``timeout_error``); ``code`` is a short
machine-readable reason or None.

The errors every front end of the server gives (HTTP and Wyoming alike) are made here: a generation that failed, a
timeout, a full queue, models not loaded yet.
"""
from __future__ import annotations

import logging

from tortoise.pipeline import NonFiniteError, OutOfMemory
from tortoise.progress import Cancelled
from tortoise.server.engine import FAILED
from tortoise.utils.errors import one_line  # one line of at most 600 characters; also for the app

log = logging.getLogger("uvicorn.error")
NOT_READY_RETRY_S = 5


def error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": one_line(message), "type": type, "param": param, "code": code}}


class APIError(Exception):
    """A request that gets an error answer: HTTP ``status`` and OpenAI's error fields (+ extra response headers)."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(one_line(message))
        self.status = status
        self.message = one_line(message)
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def bad_request(message, param=None, code=None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def generation_error(error) -> APIError:
    """What a client hears about a job that ended with ``error`` before any audio was sent."""
    if isinstance(error, Cancelled) and str(error) == "timeout":
        return timeout_error()
    if isinstance(error, Cancelled):
        return APIError(503, f"the request was cancelled ({error})", "server_error", code="cancelled")
    if isinstance(error, NonFiniteError):
        return APIError(500, f"the generation failed: {one_line(error)}", "server_error", code="non_finite_audio")
    if isinstance(error, OutOfMemory):
        return APIError(503, f"out of memory: {one_line(error)}; retry, or start the server with --low_vram or a "
                             "smaller --batch_size", "server_error", code="out_of_memory")
    if isinstance(error, ValueError):
        return APIError(400, one_line(error), code="invalid_input")
    log.error("tortoise-server: generation failed: %s: %s", type(error).__name__, one_line(error))
    return APIError(500, f"the generation failed: {type(error).__name__}: {one_line(error)}", "server_error")


def busy_error(engine, retry_after):
    """The 429 of a full queue; ``Retry-After`` is the recent median seconds per request times the requests
    waiting (:meth:`~tortoise.server.engine.Engine.retry_after`)."""
    return APIError(429, f"the server is busy: {engine.queue_size} requests are waiting; retry in {retry_after} s",
                    "rate_limit_error", code="queue_full", headers={"Retry-After": str(retry_after)})


def timeout_error():
    return APIError(504, "the request took longer than the server's --timeout: send shorter input or a faster model "
                         "(tts-1, stream)", "timeout_error", code="timeout")


def not_ready_error(engine):
    """503 while the models load (with ``Retry-After``), or for good when they failed to."""
    if engine.state == FAILED:
        return APIError(503, f"the models failed to load: {one_line(engine.error)}", "server_error",
                        code="load_failed")
    return APIError(503, "the models are still loading: retry shortly (GET /ready says when)", "server_error",
                    code="not_ready", headers={"Retry-After": str(NOT_READY_RETRY_S)})
