"""Small pieces of Trio's manners that the public classes share."""

from __future__ import annotations

import sys
from abc import ABCMeta
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import (  # type: ignore[import-not-found,unused-ignore]
        BaseExceptionGroup,
    )

__all__ = ["NoPublicConstructor", "lone_exception", "open_unwrapping_nursery"]

_T = TypeVar("_T")


class NoPublicConstructor(ABCMeta):
    """A metaclass for handles that only the library makes.

    ``Cls(...)`` raises ``TypeError``; the library calls ``Cls._create(...)``.
    This is Trio's way (its ``NoPublicConstructor``) of keeping a constructor
    private without a token argument. It derives from ``ABCMeta`` so that it
    can make subclasses of ``trio.abc`` classes.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        hint = getattr(cls, "_WHERE_TO_GET_ONE", "")
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor"
            + (f"; {hint}" if hint else "")
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


def lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a nursery's group stands for, or None if there are
    several that are not ``Cancelled`` (then the group is the honest report).

    A nursery wraps even a single exception in a group (Trio's strict
    groups). Where the nursery is ours and the exception is not (a
    handler's error, a Ctrl-C delivered to the waiting task), the caller
    deserves the exception as it was raised, not two layers of groups.
    """
    inner: tuple[BaseException, ...] = tuple(group.exceptions)
    others = [exc for exc in inner if not isinstance(exc, trio.Cancelled)]
    if len(others) == 1:
        return others[0]
    if not others:
        return inner[0]
    return None


def raise_unwrapped(exc: BaseException) -> NoReturn:
    """Raise ``exc`` again as it was, not chained to the group it came in."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


@asynccontextmanager
async def open_unwrapping_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery that lets a lone exception through without a group around it.

    Several exceptions at once still come out as the nursery's group.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        lone = lone_exception(group)
        if lone is None:
            raise
        raise_unwrapped(lone)
