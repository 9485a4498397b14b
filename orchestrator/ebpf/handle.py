"""What every live kernel object (map, program, link) has in common: one owned fd, closed
deterministically, and pins on bpffs."""

from __future__ import annotations

import errno
import os
from typing import ClassVar, Self

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import FD, Closing, Cmd
from orchestrator.ebpf.errors import KindError, PinError, SyscallError


class Handle(Closing):
    """Owns exactly one fd of a kernel object. Close it (or use ``with``); ``pin`` makes the
    object outlive every fd.

    Opening one (:meth:`from_fd`, :meth:`from_pin`, :meth:`from_id`) is written here once;
    a subclass supplies what differs: ``_kind`` (how messages name the kind, and what
    :func:`fd_kind` reports for its fds), ``_by_id`` (its BPF_*_GET_FD_BY_ID command) and
    :meth:`_adopt` (which reads the kernel's info and builds the handle). It sets ``_fd``
    and ``_pinned`` and names itself in :meth:`_what` for error messages."""

    _kind: ClassVar[str]
    _by_id: ClassVar[Cmd]
    _fd: FD
    _pinned: str | None

    @classmethod
    def _adopt(cls, fd: FD, name: str | None) -> Self:
        """A handle owning ``fd``, which holds an object of this kind: its shape and id read
        from the kernel (a :class:`SyscallError` if that fails; the caller closes ``fd``)."""
        raise NotImplementedError

    def _what(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ opening

    @classmethod
    def from_fd(cls, fd: FD, name: str | None = None) -> Self:
        """Take ownership of ``fd`` (closed on any error) after checking that it holds an
        object of this kind (else :class:`KindError`), reading what the handle needs from
        the kernel. ``name``: how messages name the object (default: the kernel's name; a
        link's description)."""
        try:
            cls._check_kind(fd)
            try:
                return cls._adopt(fd, name)
            except SyscallError as err:
                raise err.replace(subject=f"{cls._kind} fd {fd.raw}") from err
        except BaseException:
            fd.close()
            raise

    @classmethod
    def _check_kind(cls, fd: FD) -> None:
        """Raise :class:`KindError` if ``fd`` holds another kind of object (left open)."""
        found = fd_kind(fd)
        if found is not None and found != cls._kind:
            raise KindError(
                f"fd {fd.raw}: not a {cls._kind} but a {found}", wanted=cls._kind, found=found
            )

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> Self:
        """Open the object pinned at ``path`` (BPF_OBJ_GET): :class:`NotFoundError` if there
        is no such pin, :class:`PinError` if it holds another kind of object. The pin stays
        and is remembered (:meth:`unpin` without a path removes it)."""
        p = os.fspath(path)
        fd = cls._get_pin(p)
        try:
            handle = cls._adopt(fd, None)
        except BaseException as err:
            fd.close()
            if isinstance(err, SyscallError):
                raise err.replace(subject=f"{cls._kind} pin {p}", path=p) from err
            raise
        handle._adopt_pin(p)
        return handle

    @classmethod
    def _get_pin(cls, p: str) -> FD:
        """An fd of the object pinned at ``p``, which holds an object of this kind (the
        errors of :meth:`from_pin`)."""
        try:
            fd = _sys.obj_get(p)
        except SyscallError as err:
            raise err.replace(subject=f"{cls._kind} pin {p}", path=p) from err
        try:
            cls._check_kind(fd)
        except KindError as err:
            fd.close()
            raise PinError(f"{cls._kind} pin {p}: not a {cls._kind} but a {err.found}") from err
        return fd

    @classmethod
    def from_id(cls, obj_id: int) -> Self:
        """A new fd for the object with this id (CAP_SYS_ADMIN): :class:`NotFoundError` if
        there is none. Never use it to poll whether an object lives (it takes a reference;
        see :mod:`orchestrator.ebpf.inspect`)."""
        try:
            fd = _sys.fd_by_id(cls._by_id, obj_id)
        except SyscallError as err:
            raise err.replace(subject=f"{cls._kind} id {obj_id}", action="open by id") from err
        return cls.from_fd(fd)

    def _adopt_pin(self, path: str) -> None:
        """Remember the pin the handle was opened from."""
        self._pinned = path

    # ------------------------------------------------------------------ fd and pins

    @property
    def fd(self) -> FD:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd.closed

    @property
    def pinned(self) -> str | None:
        """The pin made by :meth:`pin` or opened by :meth:`from_pin`, None if neither."""
        return self._pinned

    def close(self) -> None:
        self._fd.close()

    def pin(
        self,
        path: str | os.PathLike[str],
        *,
        dir_fd: int | None = None,
        shown_dir: str | None = None,
    ) -> None:
        """Pin the object at ``path`` on bpffs (BPF_OBJ_PIN). With ``dir_fd``, ``path`` is
        relative to that directory (BPF_F_PATH_FD, Linux 6.5; no lookup from the root) and
        is not remembered as :attr:`pinned` (it names nothing without the fd); an error then
        names it under ``shown_dir`` (the directory's path, as the user would look it up),
        if given."""
        p = os.fspath(path)
        try:
            _sys.obj_pin(self._fd, p, dir_fd=dir_fd)
        except SyscallError as err:
            where = p if shown_dir is None else f"{shown_dir}/{p}"
            raise PinError(f"{self._what()}: pin {where}: {pin_reason(err)}") from err
        if dir_fd is None:
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


_KINDS = {
    "anon_inode:bpf-map": "map",
    "anon_inode:bpf-prog": "program",
    "anon_inode:bpf_link": "link",  # a link as made (bpf_link_prime)
    "anon_inode:bpf-link": "link",  # a link opened again, by pin or id (bpf_link_new_fd)
    "anon_inode:btf": "btf",
}


def fd_kind(fd: FD) -> str | None:
    """The kind of object ``fd`` holds: ``"map"``, ``"program"``, ``"link"``, ``"btf"``, or
    ``"file"`` for anything else; None if it cannot be told (no /proc). One readlink of
    /proc/self/fd (which reads the link's text and opens nothing): the kernel's info
    command cannot tell, since it answers a map's fd with a map's info whatever was asked."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd.raw}")
    except OSError:
        return None
    return _KINDS.get(target, "file")


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
