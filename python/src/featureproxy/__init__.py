"""Thin Python client for featureproxy (wire protocol v1).

    import featureproxy

    with featureproxy.Client("127.0.0.1", 7070) as fp:
        batch = fp.get("user_features", ["u1", "u2"])
        x = batch.matrix()            # 2 x 16 float32, a view of the reply (no copy)
        batch.statuses, batch.ages_ms, batch.defaulted

The protocol core uses the standard library only; numpy is needed only for ``Batch.matrix()``.

``featureproxy.__impl__`` says which core runs the sync ``Client``: ``"native"`` when the native
core (``pip install ./python/native``, the Rust client under PyO3) is installed, else
``"python"``; ``FEATUREPROXY_IMPL=auto|python|native`` chooses (see ``featureproxy._impl``).
"""

from . import _impl
from .aio import AsyncClient
from .batch import Batch, EntityStatus, Status
from .client import Client
from .errors import (
    BackendUnavailable,
    BadRow,
    BatchTooLarge,
    ClientClosed,
    ConnectFailed,
    ConnectionLost,
    ErrorCode,
    FeatureProxyError,
    ForbiddenError,
    FrameTooLarge,
    Internal,
    InvalidRequest,
    Malformed,
    Overloaded,
    ProtocolError,
    ProxyConnectionError,
    RequestTimeout,
    SchemaMismatch,
    ServerError,
    ServerTimeout,
    TLSError,
    Unauthorized,
    UnknownOp,
    UnknownView,
    UnsupportedVersion,
)
from .schema import DType, Feature, Schema

__version__ = _impl.VERSION
__impl__ = _impl.name

__all__ = [
    "Client",
    "AsyncClient",
    "Batch",
    "Status",
    "EntityStatus",
    "Schema",
    "Feature",
    "DType",
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
]
