"""What every live kernel object (map, program, link) has in common: one owned fd, closed
deterministically, and pins on bpffs."""

from __future__ import annotations

import errno
import os

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import FD, Closing
from orchestrator.ebpf.errors import PinError, SyscallError


class Handle(Closing):
    """Owns exactly one fd of a kernel object. Close it (or use ``with``); ``pin`` makes the
    object outlive every fd. Subclasses set ``_fd`` and ``_pinned`` and name themselves in
    :meth:`_what` for error messages."""

    _fd: FD
    _pinned: str | None

    def _what(self) -> str:
        raise NotImplementedError

    @property
    def fd(self) -> FD:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd.closed

    def close(self) -> None:
        self._fd.close()

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the object at ``path`` on bpffs (BPF_OBJ_PIN)."""
        p = os.fspath(path)
        try:
            _sys.obj_pin(self._fd, p)
        except SyscallError as err:
            raise PinError(f"{self._what()}: pin {p}: {pin_reason(err)}") from err
        self._pinned = p

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        """Remove ``path`` (default: the pin made by :meth:`pin` or adopted from one); a
        missing pin is not an error. The object lives on while an fd or another pin holds
        it."""
        p = os.fspath(path) if path is not None else self._pinned
        if p is None:
            return
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise PinError(f"{self._what()}: unpin {p}: {reason}") from err
        if p == self._pinned:
            self._pinned = None


def pin_reason(err: SyscallError) -> str:
    """The cause of a failed BPF_OBJ_PIN/BPF_OBJ_GET, with what to do about it."""
    text = err.detail
    if err.errno == errno.EEXIST:
        return text + " (a pin with that name exists; unpin it or choose another path)"
    if err.errno in (errno.EPERM, errno.EINVAL):
        return text + " (is the path on bpffs? mount -t bpf bpf /sys/fs/bpf)"
    if err.errno == errno.ENOENT:
        return text + " (does the directory exist?)"
    return text
