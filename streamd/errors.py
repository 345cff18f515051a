"""Errors that reach a client as JSON C{{"error": {"status": ..., "message": ...}}}."""

from __future__ import annotations


class HTTPError(Exception):
    """An error with the HTTP status it answers with."""

    status = 500

    def __init__(self, message: str, status: int | None = None, headers=None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(HTTPError):
    status = 400


class NotFound(HTTPError):
    status = 404


class PayloadTooLarge(HTTPError):
    status = 413


class UnsupportedMediaType(HTTPError):
    status = 415


class Unavailable(HTTPError):
    status = 503
