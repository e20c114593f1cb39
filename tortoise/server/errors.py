"""Errors of the speech server, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every message is one line that says what to change. ``type`` follows OpenAI's values (``invalid_request_error``,
``authentication_error``, ``rate_limit_error``, ``server_error``, plus ``timeout_error``); ``code`` is a short
machine-readable reason or None.
"""
from __future__ import annotations

from tortoise.utils.errors import one_line  # noqa: F401 (one line of at most 600 characters; also for the app)


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
