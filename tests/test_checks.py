"""Tests for ipskit.checks: the shared input checks and the one error type for bad input."""

import math

import numpy as np
import pytest

from ipskit.checks import InputError, check_bool, check_choice, check_float, check_int


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_check_int_takes_numpy_integers_and_refuses_bools_and_floats():
    assert check_int("grid", np.int64(4), minimum=2) == 4
    assert type(check_int("grid", np.int32(4))) is int
    for bad in (True, np.bool_(True), 4.0, "4", None):
        with pytest.raises(InputError, match="grid must be an int"):
            check_int("grid", bad)
    with pytest.raises(InputError, match=r"grid must be >= 2 \(one cell\), got 1"):
        check_int("grid", 1, minimum=2, why="(one cell)")
    with pytest.raises(InputError, match="pairs must be >= 1 and <= 64, got 100"):
        check_int("pairs", 100, minimum=1, maximum=64)


def test_check_float_bounds_and_finiteness():
    assert check_float("pr", np.float32(0.5), 0, 1) == 0.5
    assert check_float("T", 3, lo=0, lo_open=True) == 3.0
    for bad in (math.inf, math.nan):
        with pytest.raises(InputError, match="T must be a finite number"):
            check_float("T", bad, lo=0, lo_open=True)
    with pytest.raises(InputError, match="T must be a number, got bool"):
        check_float("T", True)
    with pytest.raises(InputError, match=r"T must be in \(0, inf\], got 0.0"):
        check_float("T", 0, lo=0, lo_open=True)
    with pytest.raises(InputError, match=r"pr must be in \[0, 1\], got 1.5"):
        check_float("pr", 1.5, 0, 1)


def test_check_bool_and_choice():
    assert check_bool("detach", np.bool_(False)) is False
    with pytest.raises(InputError, match="detach must be True or False, got int 1"):
        check_bool("detach", 1)
    assert check_choice("kind", "a", ("a", "b")) == "a"
    with pytest.raises(InputError, match="unknown kind 'c'; choose one of: a, b"):
        check_choice("kind", "c", ("a", "b"))
