"""errors.py -- the JSON error shape and the handlers that produce it.

Every error response is {"error": {"type": ..., "message": ...}} with a fitting status:
ApiError carries its own; werkzeug's HTTP errors (404 route, 405, 413) and lost connections to
Redis are converted here so that no HTML page or bare 500 leaves the app.
"""

import logging

import redis
from flask import jsonify, request
from kombu.exceptions import OperationalError as KombuOperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger("flask_app")

# An oversized body is read and thrown away up to this many bytes before the 413 goes out, so
# the client sees the response instead of a reset connection; beyond it we just close.
DRAIN_LIMIT = 64 * 1024 * 1024


class ApiError(Exception):
    """An error with an HTTP status, an error type name and a client-readable message."""

    def __init__(self, status, type_, message, headers=None):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


def bad_request(message):
    return ApiError(400, "ValidationError", message)


def not_found(message):
    return ApiError(404, "NotFound", message)


def error_response(status, type_, message, headers=None):
    resp = jsonify({"error": {"type": type_, "message": message}})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _drain_body():
    """Reads and discards what is left of the request body (bounded), see DRAIN_LIMIT."""
    length = request.content_length
    if length is None or length > DRAIN_LIMIT:
        return
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return
    try:
        left = length
        while left > 0:
            chunk = stream.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
    except Exception:  # the client went away; nothing to answer then
        pass


def register(app):
    @app.errorhandler(ApiError)
    def on_api_error(e):
        return error_response(e.status, e.type, e.message, e.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def on_too_large(e):
        _drain_body()
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(413, "PayloadTooLarge",
                              f"request body is larger than the limit of {limit} bytes "
                              f"(MAX_CONTENT_LENGTH)")

    @app.errorhandler(HTTPException)
    def on_http_error(e):
        return error_response(e.code or 500, e.name.replace(" ", ""), e.description or e.name)

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(KombuOperationalError)
    def on_redis_down(e):
        log.warning("redis unavailable: %s", e)
        return error_response(503, "ServiceUnavailable",
                              "the task broker (Redis) is not reachable; try again later",
                              {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def on_unexpected(e):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "InternalServerError", "internal error")
