"""The error hierarchy of the loader core.

Every error raised by ``orchestrator.ebpf`` derives from :class:`Error`. Messages are
lower-case and short, each layer prefixes its noun (``program xdp_main: map counters: ...``)
and keeps the root cause via ``raise ... from err``. Callers test the class, never the text.
"""

from __future__ import annotations

import errno as _errno
import os
import reprlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Self, TypeVar

if TYPE_CHECKING:
    from orchestrator.ebpf.btf.ext import LineInfo
    from orchestrator.ebpf.verifier import Diagnosis, Rejection, SourceLine

QUOTE_MAX = 80  # characters of a value that an error message shows


class Error(Exception):
    """Base class of every loader error."""


class ParseError(Error):
    """An ELF object or BTF blob is malformed or uses something we do not understand."""


class BTFError(ParseError):
    """Malformed or unsupported BTF."""


class SpecError(Error):
    """A spec is inconsistent, or a rewrite of it is invalid."""


class ConstantError(SpecError):
    """``rewrite_constants`` was given an unknown name or a value that does not fit.
    ``name`` is the constant, ``problem`` what is wrong with it; the message is
    ``constant NAME: PROBLEM``."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem)
        self.name = name
        self.problem = problem

    def __str__(self) -> str:
        return f"constant {clip(self.name)}: {self.problem}"


class KconfigError(SpecError):
    """A ``.kconfig`` extern has no value on this kernel, or a value of the wrong kind."""


class MapIncompatibleError(Error):
    """A map replacement or an existing pin does not match the spec. ``map`` is the map's
    name, ``problem`` what differs; the message is ``map NAME: PROBLEM``."""

    def __init__(self, map: str, problem: str) -> None:
        super().__init__(map, problem)
        self.map = map
        self.problem = problem

    def __str__(self) -> str:
        return f"map {self.map}: {self.problem}"


class NotSupportedError(Error):
    """The running kernel (or this loader) does not support the requested feature."""


class BindError(Error):
    """``assign`` / ``load_and_assign`` could not bind a name to a field."""


class SyscallError(Error):
    """A system call failed: a ``bpf()`` command, ``perf_event_open``, an ``ioctl``.

    Its fields say what happened; callers test them (and the class), never the message:

    - ``op``: the operation (``"lookup"``, ``"create map"``, ``"open pin"``, ``"test run"``,
      ``"perf_event_open"``);
    - ``errno``: the kernel's error number;
    - ``subject``: the object it was done to, as messages name it (``"map counters"``,
      ``"program xdp_main"``), "" when not known;
    - ``path``: the file or pin it named, "" if none;
    - ``hint``: what to do about it, "" if there is nothing to say;
    - ``detail``: what went wrong: the kernel's error (``"no such file or directory
      (ENOENT)"``, see :func:`strerror`) unless the caller knows better (``"key 1 not
      found"``).

    ``str()`` builds the message from them: ``{subject}: {action}: {detail} ({hint})``, where
    ``action`` names the step: ``op`` unless the caller says otherwise (``"pin
    /sys/fs/bpf/x"``, ``"update 3"``; "" leaves it out). A layer that adds its context makes
    a copy with :meth:`replace`."""

    def __init__(
        self,
        op: str,
        errno: int,
        *,
        subject: str = "",
        path: str = "",
        hint: str = "",
        detail: str = "",
        action: str | None = None,
    ) -> None:
        super().__init__(op, errno)
        self.args = (op, errno)
        self.errno = errno
        self.op = op
        self.subject = subject
        self.path = path
        self.hint = hint
        self.action = op if action is None else action
        self._detail = detail

    @property
    def detail(self) -> str:
        return self._detail if self._detail else strerror(self.errno)

    def __str__(self) -> str:
        text = ": ".join(part for part in (self.subject, self.action, self.detail) if part)
        return f"{text} ({self.hint})" if self.hint else text

    def replace(
        self,
        *,
        op: str | None = None,
        subject: str | None = None,
        path: str | None = None,
        hint: str | None = None,
        detail: str | None = None,
        action: str | None = None,
    ) -> Self:
        """A copy of this error (same class, same errno) with the given fields changed."""
        new = _restore(type(self), self.args, self.errno, dict(self.__dict__))
        if op is not None:
            new.op = op
        if subject is not None:
            new.subject = subject
        if path is not None:
            new.path = path
        if hint is not None:
            new.hint = hint
        if detail is not None:
            new._detail = detail
        if action is not None:
            new.action = action
        new._filled()
        return new

    def _filled(self) -> None:
        """Set what derives from the fields (a subclass that is an OSError: its fields)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore, (type(self), self.args, self.errno, dict(self.__dict__)))


_SE = TypeVar("_SE", bound=SyscallError)


def _restore(cls: type[_SE], args: tuple[object, ...], errno: int, state: dict[str, object]) -> _SE:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    err.errno = errno
    err._filled()
    return err


ENOTSUPP = 524  # the kernel's internal "not supported", which bpf() lets out


def strerror(err: int) -> str:
    """How messages name an error number: ``no such file or directory (ENOENT)``."""
    if err in (ENOTSUPP, _errno.EOPNOTSUPP):
        return "operation not supported"
    return f"{os.strerror(err).lower()} ({_errno.errorcode.get(err, err)})"


class KeyNotFoundError(SyscallError, KeyError):
    """A map element operation found no such key, or an empty queue or stack (ENOENT).
    Raised only by map element operations (lookup, update with EXIST, delete, pop, peek,
    next key, batches); a missing pin or id is a :class:`NotFoundError`."""


class KeyExistsError(SyscallError):
    """``update(..., flags=NOEXIST)`` found the key present (EEXIST)."""


class NotFoundError(SyscallError, FileNotFoundError):  # type: ignore[misc]  # errno: both
    """There is no such object: a missing pin (``from_pin``, BPF_OBJ_GET) or a map, program,
    link or BTF id that does not exist (``from_id``, BPF_*_GET_FD_BY_ID), the same for
    maps, programs and links (ENOENT).

    Also a :class:`FileNotFoundError` (``errno``, ``strerror``, ``filename`` the pin's path or
    None for an id), because a pin is a file: ``except FileNotFoundError`` around
    ``Map.from_pin`` works as it does around ``open``. It is no ``KeyError``: that is
    :class:`KeyNotFoundError`, for map elements."""

    def _filled(self) -> None:
        self.strerror = os.strerror(self.errno)
        self.filename = self.path or None

    def __init__(
        self,
        op: str,
        errno: int = _errno.ENOENT,
        *,
        subject: str = "",
        path: str = "",
        hint: str = "",
        detail: str = "",
        action: str | None = None,
    ) -> None:
        super().__init__(
            op, errno, subject=subject, path=path, hint=hint, detail=detail, action=action
        )
        self._filled()


class PermissionDeniedError(SyscallError):
    """EPERM/EACCES: missing capability, lockdown, or a read-only object."""


class VerifierError(SyscallError):
    """The kernel's verifier rejected a program.

    ``log`` holds the verifier log (``truncated``: only its tail, when the whole log would
    have been larger than the loader keeps by default); ``line_infos`` the line info records
    submitted with the program. The rejection, explained (see
    :mod:`orchestrator.ebpf.verifier`): ``reason`` (the verifier's decisive message),
    ``kind`` (its class, None if unknown) with ``explanation`` and ``fix``, ``insn`` (the
    instruction it is about) and ``source`` (that instruction's C source line)."""

    def __init__(
        self,
        detail: str,
        errno: int,
        log: str,
        program: str = "",
        *,
        line_infos: Sequence[LineInfo] = (),
        truncated: bool = False,
        diagnosis: Diagnosis | None = None,
    ) -> None:
        super().__init__(
            "load program",
            errno,
            subject=f"program {program}" if program else "",
            detail=detail,
            action="",
        )
        self.log = log
        self.program = program
        self.line_infos = tuple(line_infos)
        self.truncated = truncated
        self._diagnosis = diagnosis

    @property
    def diagnosis(self) -> Diagnosis:
        if self._diagnosis is None:
            from orchestrator.ebpf.verifier import diagnose

            self._diagnosis = diagnose(self.log, self.line_infos)
        return self._diagnosis

    @property
    def reason(self) -> str:
        return self.diagnosis.reason

    @property
    def kind(self) -> Rejection | None:
        return self.diagnosis.kind

    @property
    def explanation(self) -> str:
        kind = self.diagnosis.kind
        return kind.explanation if kind is not None else ""

    @property
    def fix(self) -> str:
        kind = self.diagnosis.kind
        return kind.fix if kind is not None else ""

    @property
    def insn(self) -> int | None:
        return self.diagnosis.insn

    @property
    def source(self) -> SourceLine | None:
        return self.diagnosis.source

    def summary(self) -> str:
        """One line: the source line, the verifier's message, the explanation and the fix
        (``prog.c:19: return *v; -- R0 invalid mem access 'map_value_or_null': a map lookup
        can return NULL; check the pointer before using it``)."""
        return self.diagnosis.summary()

    def tail(self, lines: int = 8) -> str:
        """The last lines of the log (for a message no class knows, they usually say why)."""
        tail = [ln for ln in self.log.rstrip("\n").splitlines() if ln.strip()]
        return "\n".join(tail[-lines:])

    def annotated_log(self) -> str:
        """The log with the source line of each instruction before it (as ``bpftool prog
        dump xlated linum`` shows them)."""
        from orchestrator.ebpf.verifier import annotate

        return annotate(self.log, self.line_infos)


class PinError(Error):
    """Pinning or unpinning failed, a pin path is not on bpffs, or a pin holds another kind
    of object than the one asked for (``Map.from_pin`` on a program's pin)."""


class KindError(Error, TypeError):
    """An fd holds another kind of object than the one asked for (``Map.from_fd`` given a
    program's fd). ``wanted`` and ``found`` name the kinds: ``"map"``, ``"program"``,
    ``"link"``, or what else the fd is (``"btf"``, ``"file"``)."""

    def __init__(self, message: str, *, wanted: str = "", found: str = "") -> None:
        super().__init__(message)
        self.wanted = wanted
        self.found = found


class AttachError(Error):
    """Attaching, updating or detaching a link failed. ``errno`` is the kernel's error
    number when a system call failed (0 otherwise)."""

    @property
    def errno(self) -> int:
        cause = self.__cause__
        while cause is not None and not isinstance(cause, SyscallError | OSError):
            cause = cause.__cause__
        return int(getattr(cause, "errno", 0) or 0)


class TargetNotFoundError(AttachError):
    """The hook's target does not exist: an interface, cgroup, namespace, tracepoint, file
    or symbol."""


class AttachConflictError(AttachError):
    """The hook is taken by a program someone else attached (XDP on an interface, an
    exclusive cgroup program). ``prog_id``/``prog_name``/``link_id`` name the occupant."""

    def __init__(self, message: str, *, prog_id: int = 0, prog_name: str = "", link_id: int = 0):
        super().__init__(message)
        self.prog_id = prog_id
        self.prog_name = prog_name
        self.link_id = link_id


class NetnsError(AttachError, OSError):  # type: ignore[misc]  # errno: see below
    """The calling thread could not enter a network namespace: an :class:`AttachError`, and
    an :class:`OSError` whose ``errno`` says why (EINVAL: a file that is no network
    namespace; EPERM: no CAP_SYS_ADMIN), ``strerror`` as the cause put it and ``filename``
    the path. (``errno`` is AttachError's, read from the cause: the same number.)"""

    def __init__(self, message: str, cause: OSError, path: str) -> None:
        code = cause.errno or 0
        OSError.__init__(self, code, cause.strerror or os.strerror(code), path)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NetnsNotFoundError(NetnsError, TargetNotFoundError, FileNotFoundError):  # type: ignore[misc]
    """There is no network namespace file at the path (ENOENT)."""


class NetlinkError(Error):
    """An rtnetlink request failed. ``errno`` holds the kernel's error number."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class COREError(Error):
    """A CO-RE relocation cannot be applied: malformed, ambiguous, or it does not fit the
    instruction. (An unsatisfied one is not an error: it poisons its instruction.)"""


class CORERelocationError(VerifierError):
    """The verifier reached an instruction poisoned by an unsatisfiable CO-RE relocation.
    ``relocation`` describes it (kind, local type, access path)."""

    def __init__(
        self,
        detail: str,
        errno: int,
        log: str,
        program: str = "",
        relocation: str = "",
        *,
        line_infos: Sequence[LineInfo] = (),
        truncated: bool = False,
    ) -> None:
        super().__init__(detail, errno, log, program, line_infos=line_infos, truncated=truncated)
        self.relocation = relocation


class FileError(Error, OSError):
    """A file that is refused without being read through: not a regular file (a FIFO, a
    device, a socket), one whose read would block, or one larger than its limit. Also an
    :class:`OSError` (``errno``, ``strerror``, ``filename``), so code that handles I/O errors
    handles these the same way. See :mod:`orchestrator.ebpf.files`."""


class NetnsFileError(NetnsError, FileError):  # type: ignore[misc]
    """The network namespace path is refused before it is opened: not a regular file (a
    FIFO, whose open would wait for a writer; a directory)."""


class AttachTargetError(NotSupportedError):
    """A program's attach target (``tp_btf/NAME``, ``iter/NAME``, ``fentry/NAME`` ...) or an
    extern (``__ksym`` variable, kfunc) is not in the running kernel's BTF."""


class MountNotFoundError(NotSupportedError):
    """A file system bpforch needs (cgroup v2, bpffs, tracefs) is not mounted. ``fstype``
    names it as mountinfo does (``cgroup2``, ``bpf``, ``tracefs``)."""

    def __init__(self, message: str, fstype: str) -> None:
        super().__init__(message)
        self.fstype = fstype


class UnresolvedReferenceError(SpecError):
    """A program refers to a symbol the object does not define, or carries a relocation the
    loader cannot apply (see ``ProgramSpec.unresolved``). Only that program fails to load."""

    def __init__(self, message: str, program: str = "", insn: int = -1, symbol: str = "") -> None:
        super().__init__(message)
        self.program = program
        self.insn = insn
        self.symbol = symbol


class LiteralError(SpecError):
    """A map key or value, written as a YAML/JSON literal, does not fit its BTF type (see
    :mod:`orchestrator.ebpf.values`). ``what`` is "key" or "value", ``path`` the field inside
    the literal (``("addr",)``, ``(2, "port")``) and ``reason`` what is wrong with it: a
    manifest adds its own position (file, line, column) in front of ``path``."""

    def __init__(self, what: str, path: tuple[str | int, ...], reason: str) -> None:
        self.what = what
        self.path = path
        self.reason = reason
        super().__init__(f"{what}{render_field(path)}: {reason}")


class SpecFileError(ParseError):
    """A spec in the persisted cache does not decode (damaged, or of another format
    version): the cache ignores the entry and parses the object (see
    :mod:`orchestrator.ebpf.specfile`)."""


def render_field(path: tuple[str | int, ...]) -> str:
    """``("addr", 2, "port")`` -> ``.addr[2].port`` (appended to a noun: ``key.addr[2]``)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{clip(part)}"
    return out


class _Repr(reprlib.Repr):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 8

    def repr_int(self, x: int, level: int) -> str:
        return _int_text(x, self.maxlong)


def _int_text(value: int, limit: int) -> str:
    # str() of an int over 4,300 digits raises ValueError (CVE-2020-10735): say its width
    if value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length()} bits"
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} digits)"


def quote(value: object, limit: int = QUOTE_MAX) -> str:
    """``value`` as an error message shows it: strings and bytes quoted (``repr``), and cut
    after ``limit`` characters with the full length said, so that a 50 MB value costs a
    line, not 50 MB of output: ``'aaaa…' (52428800 characters)``. Integers too wide to
    print are described by their width; containers are shown shortened (``reprlib``)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        head = repr(value[:limit])
        return f"{head[:-1]}…{head[-1]} ({len(value)} characters)"
    if isinstance(value, bytes | bytearray):
        if len(value) <= limit:
            return repr(bytes(value))
        head = repr(bytes(value[:limit]))
        return f"{head[:-1]}…{head[-1]} ({len(value)} bytes)"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return _int_text(value, limit)
    return _Repr(limit).repr(value)


def clip(text: str, limit: int = QUOTE_MAX) -> str:
    """``text`` shown as is (unquoted: a path, a name) unless it is longer than ``limit``
    characters: then cut, with its length said. For values echoed in messages, prefer
    :func:`quote`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"
