from __future__ import annotations

import errno
import importlib
import os
import pickle
import pkgutil
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import errors
from orchestrator.ebpf._sys import Cmd, UpdateFlags, error_from_errno
from orchestrator.ebpf.errors import (
    ENOTSUPP,
    ConstantError,
    KeyExistsError,
    KeyNotFoundError,
    MapIncompatibleError,
    NotFoundError,
    PermissionDeniedError,
    SyscallError,
    VerifierError,
)
from tests.conftest import obj as bpf_object


def test_every_loader_exception_class_lives_in_errors() -> None:
    # One taxonomy: callers find every class they may catch in orchestrator.ebpf.errors.
    # Private control-flow exceptions that never leave their module (_Poison) may stay.
    elsewhere = []
    for info in pkgutil.walk_packages(ebpf.__path__, prefix=f"{ebpf.__name__}."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and module is not errors
                and not name.startswith("_")
            ):
                elsewhere.append(f"{module.__name__}.{name}")
    assert elsewhere == []


# ---------------------------------------------------------------------- system call errors


def test_a_syscall_error_builds_its_message_from_its_fields() -> None:
    err = SyscallError("lookup", errno.EINVAL)
    assert (err.op, err.errno, err.subject, err.path, err.hint) == (
        "lookup",
        errno.EINVAL,
        "",
        "",
        "",
    )
    assert str(err) == "lookup: invalid argument (EINVAL)"
    said = err.replace(subject="map counters", action="lookup 3", hint="check the key")
    assert str(said) == "map counters: lookup 3: invalid argument (EINVAL) (check the key)"
    assert type(said) is SyscallError and said.errno == errno.EINVAL and said.op == "lookup"
    assert str(err) == "lookup: invalid argument (EINVAL)"  # a copy: the original is unchanged
    missing = err.replace(subject="map m", action="", detail="key 1 not found")
    assert str(missing) == "map m: key 1 not found" and missing.detail == "key 1 not found"
    assert str(SyscallError("create link", ENOTSUPP)) == "create link: operation not supported"
    assert str(SyscallError("perf_event_open", errno.ESRCH)) == (
        "perf_event_open: no such process (ESRCH)"
    )


def test_the_class_of_a_failed_command_follows_what_its_errno_means_there() -> None:
    lookup = error_from_errno("lookup", errno.ENOENT, Cmd.MAP_LOOKUP_ELEM)
    assert type(lookup) is KeyNotFoundError and isinstance(lookup, KeyError)
    assert str(lookup) == "lookup: no such file or directory (ENOENT)"  # not quoted as KeyError
    assert type(error_from_errno("next key", errno.ENOENT, Cmd.MAP_GET_NEXT_KEY)) is (
        KeyNotFoundError
    )
    assert type(error_from_errno("update", errno.EEXIST, Cmd.MAP_UPDATE_ELEM)) is KeyExistsError
    for cmd in (Cmd.OBJ_GET, Cmd.MAP_GET_FD_BY_ID, Cmd.PROG_GET_FD_BY_ID, Cmd.LINK_GET_FD_BY_ID):
        gone = error_from_errno("open", errno.ENOENT, cmd)
        assert type(gone) is NotFoundError and not isinstance(gone, KeyError)
        assert isinstance(gone, FileNotFoundError) and gone.errno == errno.ENOENT
    # ENOENT of any other command is only an errno: no missing key, no missing object
    assert type(error_from_errno("create link", errno.ENOENT, Cmd.LINK_CREATE)) is SyscallError
    assert type(error_from_errno("pin", errno.EEXIST, Cmd.OBJ_PIN)) is SyscallError
    assert type(error_from_errno("perf_event_open", errno.ENOENT)) is SyscallError
    denied = error_from_errno("load program", errno.EPERM, Cmd.PROG_LOAD)
    assert type(denied) is PermissionDeniedError


def test_not_found_is_a_file_not_found_error_naming_the_pin() -> None:
    err = NotFoundError("open pin", errno.ENOENT).replace(subject="map pin /x/m", path="/x/m")
    assert isinstance(err, FileNotFoundError) and isinstance(err, SyscallError)
    assert (err.errno, err.filename, err.strerror) == (
        errno.ENOENT,
        "/x/m",
        os.strerror(errno.ENOENT),
    )
    assert str(err) == "map pin /x/m: open pin: no such file or directory (ENOENT)"
    assert NotFoundError("link get fd by id").filename is None  # an id, no file
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is NotFoundError and str(back) == str(err) and back.filename == "/x/m"
    assert back.errno == errno.ENOENT and back.path == "/x/m"


def test_a_verifier_error_names_its_program() -> None:
    err = VerifierError("R0 invalid mem access", errno.EACCES, "", "xdp_main")
    assert str(err) == "program xdp_main: R0 invalid mem access"
    assert (err.op, err.subject, err.program) == ("load program", "program xdp_main", "xdp_main")


def test_constant_and_map_errors_carry_the_name_and_the_problem() -> None:
    err = ConstantError("limit", "value 300 does not fit u8")
    assert (err.name, err.problem) == ("limit", "value 300 does not fit u8")
    assert str(err) == "constant limit: value 300 does not fit u8"
    inc = MapIncompatibleError("flows", "map other has key size 4, spec wants 8")
    assert (inc.map, inc.problem) == ("flows", "map other has key size 4, spec wants 8")
    assert str(inc) == "map flows: map other has key size 4, spec wants 8"


# ---------------------------------------------------------------------- from the kernel


@pytest.mark.kernel
def test_a_missing_pin_or_id_is_not_found_for_maps_programs_and_links(
    pin_dir: Path, fd_guard: None
) -> None:
    missing = pin_dir / "missing"
    for kind, cls in (("map", ebpf.Map), ("program", ebpf.Program), ("link", ebpf.Link)):
        with pytest.raises(NotFoundError) as info:
            cls.from_pin(missing)
        err = info.value
        assert not isinstance(err, KeyError)
        assert (err.errno, err.path, err.filename, err.op) == (
            errno.ENOENT,
            str(missing),
            str(missing),
            "open pin",
        )
        assert str(err) == f"{kind} pin {missing}: open pin: no such file or directory (ENOENT)"
        with pytest.raises(NotFoundError) as info:
            cls.from_id(2**31 - 5)
        assert info.value.errno == errno.ENOENT and info.value.filename is None
        assert str(info.value) == (
            f"{kind} id {2**31 - 5}: open by id: no such file or directory (ENOENT)"
        )


@pytest.mark.kernel
def test_a_missing_key_is_key_not_found(fd_guard: None) -> None:
    with ebpf.Collection(ebpf.CollectionSpec.from_file(bpf_object("map_types.o"))) as coll:
        m = coll.maps["m_hash"]
        with pytest.raises(KeyNotFoundError) as info:
            m.lookup(7)
        err = info.value
        assert not isinstance(err, NotFoundError) and isinstance(err, KeyError)
        assert (err.op, err.errno, err.subject) == ("lookup", errno.ENOENT, "map m_hash")
        assert str(err) == "map m_hash: key 7 not found"
        with pytest.raises(KeyNotFoundError) as info:
            m.delete(7)
        assert info.value.op == "delete" and str(info.value) == "map m_hash: key 7 not found"
        with pytest.raises(KeyNotFoundError) as info:
            m.update(7, {"a": 1, "b": 2}, UpdateFlags.EXIST)
        assert str(info.value) == ("map m_hash: update 7: no such file or directory (ENOENT)")
