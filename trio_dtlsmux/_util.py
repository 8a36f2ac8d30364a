"""Small pieces of Trio's manners that the public classes share."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any, NoReturn, TypeVar

__all__ = ["NoPublicConstructor"]

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
