"""The notes of the call being served, from the interceptor to the servicer.

gRPC hands a servicer only its request and context; the interceptor opens
a `CallNotes` for each call here, the servicer passes it to the core
explicitly, and the interceptor reads it back for the metrics' labels and
the request line.
"""

from __future__ import annotations

from contextvars import ContextVar

from forecast_gateway.core.results import CallNotes

_CURRENT: ContextVar[CallNotes] = ContextVar("forecast_gateway_call_notes")


def begin() -> CallNotes:
    """Fresh notes for the call starting in this context."""
    notes = CallNotes()
    _CURRENT.set(notes)
    return notes


def current() -> CallNotes:
    """The notes of the call being served (fresh, unattached ones outside a call)."""
    notes = _CURRENT.get(None)
    return notes if notes is not None else CallNotes()
