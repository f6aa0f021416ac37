"""
Automat inputs, bound to their object once rather than at every call.

``MethodicalInput.__get__`` (Automat 25) makes a new function each time an
input is looked up on an object: it copies the method's code object to
give the function its name, finds the object's transitioner and wraps.
An upload looks up ``_chunk`` for every chunk and a handful of other inputs
once each, and that copying was a few per cent of the server's CPU with
many small uploads.  The function it makes depends only on the input and
the object, so `bind_inputs_once` replaces each input of a class with a
descriptor that keeps the first one in the object's ``__dict__``, where
later lookups find it.  Remove this when Automat caches it itself.
"""

from __future__ import annotations

from typing import Any

from automat._methodical import MethodicalInput


class _BoundOnce:
    __slots__ = ("_input", "_name")

    def __init__(self, machine_input: MethodicalInput, name: str) -> None:
        self._input = machine_input
        self._name = name

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self._input
        bound = self._input.__get__(instance, owner)
        instance.__dict__[self._name] = bound  # found first from now on
        return bound


def bind_inputs_once(cls: type) -> type:
    """Every MethodicalInput of ``cls`` (see the module)."""
    for name, value in list(vars(cls).items()):
        if isinstance(value, MethodicalInput):
            setattr(cls, name, _BoundOnce(value, name))
    return cls
