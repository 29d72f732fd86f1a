"""Waiting for a condition in tests: poll it until it holds or a deadline passes.

A test that must wait for something asynchronous (a shadow forecast run
after the answer, a write-behind flush, a routing reload, a refresh) polls
the thing itself instead of sleeping a guessed time: it goes on as soon as
the condition holds, and it fails, saying what it waited for, if it never
does. `eventually` is for coroutines (the check may be a coroutine function),
`eventually_sync` for plain test code. "Holds" is a truthy value: a check
whose answer may be 0 or empty returns it in a tuple.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")

TIMEOUT_S = 10.0
INTERVAL_S = 0.05

Message = str | Callable[[], str]


def _failure(timeout_s: float, message: Message, last: object) -> AssertionError:
    text = message() if callable(message) else message
    return AssertionError(
        f"not within {timeout_s:g} s: {text or 'the condition'} (last check: {last!r})"
    )


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    message: Message = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    message: Message = ...,
) -> T: ...


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    message: Message = "",
) -> T:
    """The first truthy value of `check()`, polled every `interval_s`; fails after `timeout_s`.

    `check` is called at least once, and once more at the deadline. An
    `interval_s` of 0 yields one loop turn between checks (for conditions
    that in-process tasks make true).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        value = cast(T, await result if inspect.isawaitable(result) else result)
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(timeout_s, message, value)
        await asyncio.sleep(min(interval_s, remaining))


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    message: Message = "",
) -> T:
    """`eventually` for code outside an event loop: `time.sleep` between checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(timeout_s, message, value)
        time.sleep(min(interval_s, remaining))
