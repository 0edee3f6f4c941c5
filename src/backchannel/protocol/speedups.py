"""Which implementation of the hot path runs: the compiled accelerator or pure Python.

The accelerator, :mod:`backchannel.protocol._speedups`, is a small C extension built on
install where a C compiler is present. It provides masking, incremental UTF-8 validation,
frame encoding and a decoder for runs of simple data frames. Each has a pure-Python
twin in the module that uses it, and the tests check that both agree on any input.

Set the environment variable ``BACKCHANNEL_NO_EXTENSIONS=1`` (before backchannel is
imported) to run on the pure-Python path even where the accelerator is installed.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["ACTIVE", "DISABLED", "compiled"]

#: True when ``BACKCHANNEL_NO_EXTENSIONS`` asks for the pure-Python path.
DISABLED = os.environ.get("BACKCHANNEL_NO_EXTENSIONS", "") not in ("", "0")


def _load() -> ModuleType | None:
    if DISABLED:
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


#: The compiled module, or None on the pure-Python path.
compiled = _load()

#: True when the compiled accelerator is in use.
ACTIVE = compiled is not None
