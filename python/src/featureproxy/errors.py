"""Exceptions raised by the featureproxy client.

Everything the client raises on purpose derives from :class:`FeatureProxyError`::

    FeatureProxyError
    ├── ServerError(code, message)         the proxy answered with an ERROR frame
    │   ├── Malformed                 (1)  connection closed by the server
    │   ├── FrameTooLarge             (2)  connection closed by the server
    │   ├── UnknownOp                 (3)
    │   ├── UnknownView               (4)
    │   ├── SchemaMismatch            (5)  the client refetches the schema and retries once
    │   ├── BatchTooLarge             (6)
    │   ├── BadRow                    (7)
    │   ├── Overloaded                (8)
    │   ├── Unauthorized              (9)  connection closed by the server
    │   ├── UnsupportedVersion       (10)  connection closed by the server
    │   ├── BackendUnavailable       (11)
    │   ├── ServerTimeout            (12)  Redis did not acknowledge a PUT in time
    │   ├── Internal                 (13)
    │   └── ForbiddenError           (14)  valid token, but its principal lacks the grant;
    │                                      the connection stays open
    ├── ProtocolError(code, message)       bytes that do not follow protocol v1
    ├── ProxyConnectionError               also a builtin ConnectionError
    │   ├── ConnectFailed                  could not connect or say HELLO
    │   │   └── TLSError                   the TLS handshake failed, or TLS files could not
    │   │                                  be loaded; the message says what to do
    │   └── ConnectionLost                 the connection dropped while a call waited
    ├── RequestTimeout                     also a builtin TimeoutError: no reply in time
    ├── InvalidRequest                     also a ValueError: rejected before sending
    └── ClientClosed                       the client was closed
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "FeatureProxyError",
    "ServerError",
    "Malformed",
    "FrameTooLarge",
    "UnknownOp",
    "UnknownView",
    "SchemaMismatch",
    "BatchTooLarge",
    "BadRow",
    "Overloaded",
    "Unauthorized",
    "UnsupportedVersion",
    "BackendUnavailable",
    "ServerTimeout",
    "Internal",
    "ForbiddenError",
    "ProtocolError",
    "ProxyConnectionError",
    "ConnectFailed",
    "TLSError",
    "ConnectionLost",
    "RequestTimeout",
    "InvalidRequest",
    "ClientClosed",
    "server_error",
]


class ErrorCode(enum.IntEnum):
    """The error codes of protocol v1 (SPEC.md section 4)."""

    MALFORMED = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_OP = 3
    UNKNOWN_VIEW = 4
    SCHEMA_MISMATCH = 5
    BATCH_TOO_LARGE = 6
    BAD_ROW = 7
    OVERLOADED = 8
    UNAUTHORIZED = 9
    UNSUPPORTED_VERSION = 10
    BACKEND_UNAVAILABLE = 11
    TIMEOUT = 12
    INTERNAL = 13
    FORBIDDEN = 14

    @property
    def closes_connection(self) -> bool:
        """True for the codes after which the server closes the connection."""
        return self in _CLOSING


_CLOSING = frozenset(
    {ErrorCode.MALFORMED, ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNAUTHORIZED, ErrorCode.UNSUPPORTED_VERSION}
)


class FeatureProxyError(Exception):
    """Base class of every error this package raises on purpose."""


class ServerError(FeatureProxyError):
    """The proxy answered a request with an ERROR frame.

    ``code`` is the :class:`ErrorCode`, or the raw ``int`` for a code this client does not know
    (a newer server's), ``message`` the server's text. ``address`` names the proxy
    (``host:port``) when known.
    """

    code: ErrorCode | int = ErrorCode.INTERNAL

    def __init__(self, code: int, message: str, address: str | None = None):
        try:
            self.code = ErrorCode(code)
            name = self.code.name
        except ValueError:
            self.code = int(code)
            name = f"error code {self.code}"
        self.message = message
        self.address = address
        where = f"featureproxy {address}: " if address else ""
        super().__init__(f"{where}{name}: {message}{self._advice}")

    # Appended to the message where the code alone does not say what to do.
    _advice = ""


class Malformed(ServerError):
    code = ErrorCode.MALFORMED


class FrameTooLarge(ServerError):
    code = ErrorCode.FRAME_TOO_LARGE


class UnknownOp(ServerError):
    code = ErrorCode.UNKNOWN_OP


class UnknownView(ServerError):
    code = ErrorCode.UNKNOWN_VIEW


class SchemaMismatch(ServerError):
    code = ErrorCode.SCHEMA_MISMATCH


class BatchTooLarge(ServerError):
    code = ErrorCode.BATCH_TOO_LARGE


class BadRow(ServerError):
    code = ErrorCode.BAD_ROW


class Overloaded(ServerError):
    code = ErrorCode.OVERLOADED


class Unauthorized(ServerError):
    code = ErrorCode.UNAUTHORIZED


class UnsupportedVersion(ServerError):
    code = ErrorCode.UNSUPPORTED_VERSION


class BackendUnavailable(ServerError):
    code = ErrorCode.BACKEND_UNAVAILABLE


class ServerTimeout(ServerError):
    """Error code TIMEOUT: Redis did not acknowledge a PUT within the server's write_timeout."""

    code = ErrorCode.TIMEOUT


class Internal(ServerError):
    code = ErrorCode.INTERNAL


class ForbiddenError(ServerError):
    """Error code FORBIDDEN: the token is valid, but its principal may not do this operation on
    this view (GET or SCHEMA of a view it may not read, PUT to a view it may not write).

    Unlike :class:`Unauthorized`, the connection stays open and the client's other calls go on.
    Retrying does not help: the proxy's access file must grant it. ``message`` is the server's
    text, which names the op and the view.
    """

    code = ErrorCode.FORBIDDEN
    _advice = (
        " (the token is valid, but its principal may not do this on this view; ask for a grant"
        " in the proxy's access file: read for GET and SCHEMA, write for PUT)"
    )


_BY_CODE: dict[int, type[ServerError]] = {
    cls.code: cls
    for cls in (
        Malformed,
        FrameTooLarge,
        UnknownOp,
        UnknownView,
        SchemaMismatch,
        BatchTooLarge,
        BadRow,
        Overloaded,
        Unauthorized,
        UnsupportedVersion,
        BackendUnavailable,
        ServerTimeout,
        Internal,
        ForbiddenError,
    )
}


def server_error(code: int, message: str, address: str | None = None) -> ServerError:
    """The ServerError subclass for ``code``, built with ``message``; a plain ServerError that
    keeps the raw code for a code this client does not know."""
    return _BY_CODE.get(code, ServerError)(code, message, address)


class ProtocolError(FeatureProxyError):
    """Bytes that do not follow protocol v1.

    Raised by the codec (``featureproxy.protocol``) with the :class:`ErrorCode` a v1 decoder
    assigns (``code``) and, for frame-level errors, the request id the error carries. A client
    that receives such bytes from the server treats the connection as broken.
    """

    def __init__(self, code: int, message: str, request_id: int = 0):
        self.code = ErrorCode(code)
        self.message = message
        self.request_id = request_id
        super().__init__(f"{self.code.name}: {message}")


class ProxyConnectionError(FeatureProxyError, ConnectionError):
    """The connection to the proxy could not be made or was lost. The message names the address."""


class ConnectFailed(ProxyConnectionError):
    """Connecting (TCP connect or the HELLO handshake) failed."""


class TLSError(ConnectFailed):
    """Connecting over TLS failed: the server's certificate was not trusted, had expired or did not
    name the host; the server required or refused the client's certificate; the port does not
    speak TLS; or the client's CA or certificate files could not be loaded. Raised by the
    constructor (``AsyncClient.connect``) or by the call that reconnects.

    The message names the proxy's address, what happened and what to do. ``reason`` is a short
    tag of the case: ``"untrusted_server"``, ``"expired"``, ``"not_yet_valid"``,
    ``"hostname_mismatch"``, ``"verification"``, ``"client_cert_required"``,
    ``"client_cert_refused"``, ``"not_tls"``, ``"version"``, ``"alpn"``, ``"closed"``,
    ``"timeout"``, ``"ca_file"``, ``"client_cert"`` or ``"other"``. The OpenSSL error, when there
    is one, is the exception's ``__cause__``.
    """

    def __init__(self, message: str, reason: str = "other"):
        super().__init__(message)
        self.reason = reason


class ConnectionLost(ProxyConnectionError):
    """The connection dropped while a call waited for its reply. The next call reconnects."""


class RequestTimeout(FeatureProxyError, TimeoutError):
    """No reply within the client's timeout. The request's waiter is removed; a late reply is dropped."""


class InvalidRequest(FeatureProxyError, ValueError):
    """The client refused to send a request that breaks a protocol limit or the view's schema."""


class ClientClosed(FeatureProxyError):
    """The client was closed."""
