"""The error hierarchy of the loader core.

Every error raised by ``orchestrator.ebpf`` derives from :class:`Error`. Messages are
lower-case and short, each layer prefixes its noun (``program xdp_main: map counters: ...``)
and keeps the root cause via ``raise ... from err``. Callers test the class, never the text.
"""

from __future__ import annotations

import errno as _errno
import os


class Error(Exception):
    """Base class of every loader error."""


class ParseError(Error):
    """An ELF object or BTF blob is malformed or uses something we do not understand."""


class BTFError(ParseError):
    """Malformed or unsupported BTF."""


class SpecError(Error):
    """A spec is inconsistent, or a rewrite of it is invalid."""


class ConstantError(SpecError):
    """``rewrite_constants`` was given an unknown name or a value that does not fit."""


class MapIncompatibleError(Error):
    """A map replacement or an existing pin does not match the spec."""


class NotSupportedError(Error):
    """The running kernel (or this loader) does not support the requested feature."""


class BindError(Error):
    """``assign`` / ``load_and_assign`` could not bind a name to a field."""


class SyscallError(Error):
    """A system call failed. ``errno`` holds the raw error number."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def from_errno(cls, what: str, err: int, hint: str = "") -> SyscallError:
        text = f"{what}: {os.strerror(err).lower()} ({_errno.errorcode.get(err, err)})"
        if hint:
            text += f" ({hint})"
        klass: type[SyscallError] = cls
        if err == _errno.ENOENT:
            klass = KeyNotFoundError if cls is SyscallError else cls
        return klass(text, err)


class KeyNotFoundError(SyscallError, KeyError):
    """A map lookup or delete found no such key (ENOENT)."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class KeyExistsError(SyscallError):
    """``update(..., flags=NOEXIST)`` found the key present (EEXIST)."""


class PermissionDeniedError(SyscallError):
    """EPERM/EACCES: missing capability, lockdown, or a read-only object."""


class VerifierError(SyscallError):
    """The kernel's verifier rejected a program. ``log`` holds the full verifier log."""

    def __init__(self, message: str, errno: int, log: str, program: str = "") -> None:
        super().__init__(message, errno)
        self.log = log
        self.program = program

    def summary(self, lines: int = 8) -> str:
        """The last lines of the log, which usually say why."""
        tail = [ln for ln in self.log.rstrip("\n").splitlines() if ln.strip()]
        return "\n".join(tail[-lines:])


class PinError(Error):
    """Pinning or unpinning failed, or a pin path is not on bpffs."""


class CORERelocationError(VerifierError):
    """The verifier reached an instruction poisoned by an unsatisfiable CO-RE relocation.
    ``relocation`` describes it (kind, local type, access path)."""

    def __init__(
        self, message: str, errno: int, log: str, program: str = "", relocation: str = ""
    ) -> None:
        super().__init__(message, errno, log, program)
        self.relocation = relocation


class AttachTargetError(NotSupportedError):
    """A program's attach target (``tp_btf/NAME``, ``iter/NAME``, ``fentry/NAME`` ...) or an
    extern (``__ksym`` variable, kfunc) is not in the running kernel's BTF."""
