"""Reading a request's body from a stranger: bounded in size and in time, never a 500.

Nylas and Slack send small bodies at once. A client that sends a body slowly would otherwise
hold a connection (and a handler) for as long as it likes, and one that drops the connection
mid-body would end in an error traceback. Both are the client's doing and get a 4xx.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("reauthbot.http")

# How long a request may take to send its body, once its headers arrived.
READ_TIMEOUT = web.AppKey("read_timeout", float)
DEFAULT_READ_TIMEOUT = 10.0


class ClientFaults(logging.Filter):
    """Turn the server's error report of a client's fault into one INFO line, no traceback.

    aiohttp logs a malformed request (a bad request line or header, broken chunking) and a
    connection the client dropped as an ERROR with a traceback; either is the client's doing,
    and anyone can send one, so it must not page anyone or flood the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | ConnectionError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "request refused: %s", (type(error).__name__,)
            record.exc_info = record.exc_text = None
        return True


def quiet_client_faults() -> None:
    """Install ``ClientFaults`` on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaults) for f in server.filters):
        server.addFilter(ClientFaults())


class BodyError(Exception):
    """The body could not be read; ``status`` and the message say why (the client's fault)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request) -> bytes:
    """The request's whole body, or BodyError: too large (413), too slow (408), cut short (400)."""
    timeout = request.app.get(READ_TIMEOUT, DEFAULT_READ_TIMEOUT)
    try:
        if request.content.is_eof():
            # All of it has arrived (the usual case: a small body in the headers' packet), so
            # reading it cannot wait; a timeout scope would cost a tenth of a delivery's time.
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(413, "body is larger than 1 MiB") from None
    except TimeoutError:
        log.info("request body too slow", extra={"path": request.path, "after_s": timeout})
        raise BodyError(408, "the body did not arrive in time") from None
    except (ConnectionError, HttpProcessingError) as exc:
        # The client went away or sent a broken body (a bad chunk): nobody waits for the answer.
        log.info(
            "request body cut short", extra={"path": request.path, "error": type(exc).__name__}
        )
        raise BodyError(400, "the body was cut short") from None
