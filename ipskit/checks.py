"""Input checks shared by the whole kit, and the one error type for bad input.

Bad input (a value out of range, a wrong kind of value, an unknown name, a file that is not
what it should be) raises :class:`InputError`, a ``ValueError`` with one line that says what was
given and what is allowed. The command line turns it into ``error: ...`` and exit status 2;
every other exception is a bug and keeps its traceback there. Values are checked once, where
they enter the kit (a public function, a ``TrainConfig``), not again on every training step.

Numbers are accepted as Python or NumPy scalars (``np.int64(4)`` is a fine grid), never as
``bool`` (``True`` is not a grid of 1).

Usage:
    grid = check_int("grid", grid, minimum=2, why="(a single patch cannot be swapped)")
    pr = check_float("pr", pr, 0.0, 1.0)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["InputError", "check_int", "check_float", "check_bool", "check_choice", "check_device"]


class InputError(ValueError):
    """Bad input: the message is one line naming the value and what is allowed."""


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_int(
    name: str, value, minimum: int | None = None, maximum: int | None = None, why: str = ""
) -> int:
    """``value`` as an ``int`` (Python or NumPy integer, not bool) in ``[minimum, maximum]``.

    Raises:
        InputError: not an integer, or out of range; ``why`` is appended to the message.
    """
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "" if minimum is None else f">= {minimum}"
        hi = "" if maximum is None else f"<= {maximum}"
        rule = " and ".join(r for r in (lo, hi) if r)
        raise InputError(f"{name} must be {rule}{' ' + why if why else ''}, got {value}")
    return value


def check_float(
    name: str,
    value,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` (int, float or NumPy number, not bool) within the bounds.

    Raises:
        InputError: not a real number, not finite, or out of ``[lo, hi]`` (``(`` / ``)`` where
        a bound is open).
    """
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        interval = (
            f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
            f"{'inf' if hi is None else hi}{')' if hi_open else ']'}"
        )
        raise InputError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` as a ``bool`` (Python or NumPy); InputError for anything else (0, 1, "yes")."""
    if not _is_bool(value):
        raise InputError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(name: str, value, allowed) -> str:
    """``value`` if it is one of ``allowed``; InputError listing them otherwise."""
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")
    return value


def check_device(device) -> str:
    """``device`` if it names a device ipskit can be asked for: auto, cpu, cuda, cuda:N or mps
    (whether that device is present is checked when it is used)."""
    kind = device.split(":")[0] if isinstance(device, str) else None
    if kind not in ("auto", "cpu", "cuda", "mps") or (
        ":" in device and (kind != "cuda" or not device.split(":", 1)[1].isdigit())
    ):
        raise InputError(f"device {device!r} is not one of: auto, cpu, cuda, cuda:N, mps")
    return device
