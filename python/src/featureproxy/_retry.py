"""The retries of GET and PUT, without I/O: one policy for Client and AsyncClient.

A GET or PUT is encoded for the client's cached schema of its view, which goes stale when the
proxy's registry changes. The server then answers SCHEMA_MISMATCH, or UNKNOWN_VIEW, or (for a GET)
a reply laid out for another schema; the client refetches the schema once and tries again.

A GET the server shed (OVERLOADED) is sent once more after a short pause, when the client's
:class:`~featureproxy._overload.OverloadRetry` allows it (the pause ends within the GET's timeout
and the retry budget has a token). A PUT is never retried on OVERLOADED: the server does not shed
PUTs, and a write sent again after others wrote the same keys would overwrite newer rows.

:func:`get` and :func:`put` are generators that yield the I/O they need (:class:`Call`,
:class:`FetchSchema`, :class:`Pause`) and receive each step's outcome. :class:`Plan` wraps one, so
that a client carries it out with a loop of its own I/O::

    plan = Plan(get(client, view, keys, deadline, bypass_cache, cached=view in client._schemas))
    while not plan.done:
        ...  # carry out plan.step; then plan.send(its value), or plan.throw(what it raised)
    return plan.result
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator, Generic, Protocol, TypeVar, Union

from . import _common as c
from . import protocol as p
from .batch import Batch
from ._overload import OverloadRetry
from .errors import Overloaded, ProtocolError, SchemaMismatch, UnknownView
from .schema import Schema

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """Send this request and hand back its interpreted reply (``timeout`` None: the client's)."""

    op: int
    body: bytes
    what: str
    timeout: float | None = None


@dataclass(frozen=True)
class FetchSchema:
    """Hand back the view's schema: the cached one, or with ``refresh`` a freshly fetched one."""

    view: str
    refresh: bool


@dataclass(frozen=True)
class Pause:
    """Wait this many seconds, then hand back None."""

    seconds: float


Step = Union[Call, FetchSchema, Pause]
Steps = Generator[Step, Any, T]


class Limits(Protocol):
    """What a plan reads of its client."""

    address: str
    timeout: float
    max_frame: int
    max_batch: int


class Plan(Generic[T]):
    """A GET or PUT in progress: ``step`` is the I/O it waits for, until ``done`` with ``result``.

    Creating it runs the operation up to its first step, so bad arguments raise here; ``send``
    and ``throw`` raise the operation's error when the policy gives up.
    """

    def __init__(self, steps: Steps[T]):
        self._steps = steps
        self.step: Step | None = None
        self.done = False
        self.result: T | None = None
        self._advance(steps.send, None)

    def send(self, value: Any) -> None:
        """Hands the plan the value of ``step``."""
        self._advance(self._steps.send, value)

    def throw(self, error: BaseException) -> None:
        """Hands the plan the exception ``step`` raised; raises it again unless the plan retries."""
        self._advance(self._steps.throw, error)

    def _advance(self, how, arg) -> None:
        try:
            self.step = how(arg)
        except StopIteration as stop:
            self.step, self.done, self.result = None, True, stop.value


def refetch(e: Exception, refetches: int, cached: bool) -> bool:
    # A schema fetched for this very call names the view the server has now, so UNKNOWN_VIEW
    # means the view is gone: refetching would not help. A cached one may predate a reload.
    return refetches == 0 and (cached or isinstance(e, SchemaMismatch))


def get(
    client: Limits,
    view: str,
    keys,
    deadline: float | None,
    bypass_cache: bool,
    *,
    cached: bool,
    overload: OverloadRetry | None = None,
    codec=None,
) -> Steps[Batch]:
    """The steps of ``Client.get``; ``cached``: the view's schema was cached when the call began;
    ``overload``: the client's overload retries (None: OVERLOADED is raised at once); ``codec``:
    the native module, whose ``encode_get_body`` checks and encodes the keys in one call (None:
    the Python codec, which checks them before the first step)."""
    if codec is None:
        keys, kb = c.keys_bytes(keys)
        n = len(kb)
    else:
        keys = c.key_list(keys)
        n = len(keys)
    dl = c.deadline_us(deadline)
    flags = p.GET_BYPASS_CACHE if bypass_cache else 0
    # The server may take the whole deadline; the client must not give up before it answers.
    wait = client.timeout if deadline is None else max(client.timeout, float(deadline))
    what = f"GET {view!r} ({n} key{'' if n == 1 else 's'})"
    schema: Schema = yield FetchSchema(view, refresh=False)
    if overload is not None:
        now = overload.clock()
        overload.sent(now)
        give_up_at = now + wait  # an overload retry never waits past the GET's own timeout
    refetches = 0
    shed_retried = False
    while True:
        # Read the limits anew: the refetch may have reconnected to a server with others.
        if codec is None:
            c.check_get_limits(schema, kb, client.max_frame, client.max_batch)
            body = p.GetRequest(schema.view_id, flags, schema.schema_id, dl, kb).encode_body()
        else:
            body = codec.encode_get_body(schema.view_id, flags, schema.schema_id, dl, keys)
            c.check_get_sizes(schema, n, 8 + len(body), client.max_frame, client.max_batch)
        try:
            reply = yield Call(p.OP_GET, body, what, wait)
        except (SchemaMismatch, UnknownView) as e:
            if refetch(e, refetches, cached):
                refetches += 1
                schema = yield FetchSchema(view, refresh=True)
                continue
            raise
        except Overloaded:
            pause = None
            if overload is not None and not shed_retried:
                pause = overload.pause(overload.clock(), give_up_at)
            if pause is None:
                raise
        else:
            if c.check_get_reply(reply, schema, n):
                return Batch(schema, keys, reply)
            if refetches == 0:
                refetches += 1
                schema = yield FetchSchema(view, refresh=True)
                continue
            raise ProtocolError(1, f"featureproxy {client.address}: GET {view!r} reply does not match its schema")
        # Shed: once more after the pause, waiting only for what is left of the timeout.
        shed_retried = True
        yield Pause(pause)
        wait = max(0.0, give_up_at - overload.clock())


def put(client: Limits, view: str, rows, *, cached: bool) -> Steps[int]:
    """The steps of ``Client.put``; ``cached``: the view's schema was cached when the call began."""
    items = c.put_items(rows)
    schema: Schema = yield FetchSchema(view, refresh=False)
    for attempt in (0, 1):
        # Re-encoded each attempt: the rows' layout is the schema's.
        req = c.encode_put(schema, items)
        c.check_put_limits(req, view, client.max_frame, client.max_batch)
        try:
            reply = yield Call(p.OP_PUT, req.encode_body(), f"PUT {view!r} ({req.n} row{'' if req.n == 1 else 's'})")
        except (SchemaMismatch, UnknownView) as e:
            if refetch(e, attempt, cached):
                schema = yield FetchSchema(view, refresh=True)
                continue
            raise
        return reply.written
    raise AssertionError("unreachable")
