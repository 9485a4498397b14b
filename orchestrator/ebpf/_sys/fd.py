"""Owned file descriptors: closed exactly once, deterministically (``with``), with a
finalizer that only reports leaks."""

from __future__ import annotations

import errno as _errno
import os
import warnings
from types import TracebackType
from typing import ClassVar, Self

from orchestrator.ebpf.errors import SyscallError


class Closing:
    """``with obj:`` closes ``obj`` at the end of the block (also on error)."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FD(Closing):
    """An owned file descriptor. ``close`` is idempotent; use it as a context manager.

    The finalizer only catches leaks (and warns); owners close explicitly.
    """

    __slots__ = ("__weakref__", "_fd")

    _open_count: ClassVar[int] = 0

    def __init__(self, fd: int) -> None:
        if fd < 0:
            raise ValueError(f"invalid fd {fd}")
        self._fd = fd

    @property
    def raw(self) -> int:
        if self._fd < 0:
            raise SyscallError("use fd", _errno.EBADF, action="", detail="use of closed fd")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def dup(self) -> FD:
        return FD(os.dup(self.raw))

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed bpf fd {self._fd}", ResourceWarning, stacklevel=1)
            self.close()

    def __int__(self) -> int:
        return self.raw

    def __repr__(self) -> str:
        return f"FD({self._fd})" if self._fd >= 0 else "FD(closed)"
