"""``promptly(fn)``: run something that must not block, failing the test (instead of
hanging the suite) if it does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def promptly(fn: Callable[[], T], seconds: float = 5.0) -> T:
    """``fn()`` run in a thread; its result or its exception, or a test failure if it has
    not returned after ``seconds`` (the thread is left behind, a daemon)."""
    box: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as err:  # handed to the test's thread
            box.append((False, err))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"blocked for more than {seconds} s")
    ok, value = box[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
