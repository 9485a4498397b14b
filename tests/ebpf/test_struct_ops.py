"""struct_ops: a BPF TCP congestion control registered and chosen by a socket."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf.errors import SpecError
from orchestrator.ebpf.link.struct_ops import StructOpsMap, attach_struct_ops
from tests.conftest import require_tool

pytestmark = pytest.mark.kernel

AVAILABLE = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")

# Runs in a fresh network namespace (unshare -n): a loopback TCP connection whose client
# picks the congestion control by name, then sends some data. Prints the name in use.
CLIENT = r"""
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.socket()
cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, sys.argv[1].encode())
cli.connect(srv.getsockname())
conn, _ = srv.accept()
for _ in range(64):
    cli.sendall(b"x" * 65536)
    got = 0
    while got < 65536:
        got += len(conn.recv(65536))
print(cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode())
"""


def _in_netns(cc: str) -> subprocess.CompletedProcess[str]:
    unshare = require_tool("unshare")
    return subprocess.run(
        [unshare, "--net", sys.executable, "-c", CLIENT, cc],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("variant", ["link", "plain"])
def test_tcp_congestion_ops(
    build: Callable[..., ebpf.CollectionSpec],
    variant: str,
    fd_guard: None,
) -> None:
    spec = build("tcp_cc.c", *(["-DPLAIN"] if variant == "plain" else []))
    ms = spec.maps["bpforch_cc"]
    assert ms.type == ebpf.MapType.STRUCT_OPS and ms.struct_ops is not None
    assert ms.struct_ops.link == (variant == "link")
    assert set(ms.struct_ops.funcs) == {"init", "ssthresh", "cong_avoid", "undo_cwnd"}
    with ebpf.Collection(spec) as coll:
        assert isinstance(coll.maps["bpforch_cc"], StructOpsMap)
        assert "bpforch_cc" not in AVAILABLE.read_text().split()  # loaded, not registered
        with attach_struct_ops(coll, "bpforch_cc") as registered:
            assert "bpforch_cc" in AVAILABLE.read_text().split()
            if variant == "link":
                assert registered.link is not None
                assert registered.link.type == ebpf.LinkType.STRUCT_OPS
            else:
                assert registered.link is None
            proc = _in_netns("bpforch_cc")
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "bpforch_cc"
            counters = coll.maps[".bss"].lookup(0)
        assert isinstance(counters, bytes)
        inits, acks = int.from_bytes(counters[:8], "little"), int.from_bytes(counters[8:], "little")
        assert inits >= 1 and acks >= 1
        assert "bpforch_cc" not in AVAILABLE.read_text().split()  # unregistered on close
        with pytest.raises(SpecError, match="not a struct_ops map"):
            attach_struct_ops(coll, ".bss")


UNUSED = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("struct_ops/orphan")
int orphan(void *ctx) { return 0; }
"""


def test_struct_ops_program_without_table(
    vmlinux_h: Path,
    compile_bpf: Callable[..., Path],
    fd_guard: None,
) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(UNUSED, f"-I{vmlinux_h}"))
    with pytest.raises(SpecError, match="used by no struct_ops map"):
        ebpf.Collection(spec)


def test_pinned_struct_ops_link_outlives_the_collection(
    build: Callable[..., ebpf.CollectionSpec], pin_dir: Path, fd_guard: None
) -> None:
    spec = build("tcp_cc.c")
    pin = pin_dir / "bpforch_cc"
    with ebpf.Collection(spec) as coll, attach_struct_ops(coll, "bpforch_cc") as registered:
        assert registered.link is not None
        registered.link.pin(pin)
    # collection and our link fd are closed: the pin keeps the congestion control registered
    assert "bpforch_cc" in AVAILABLE.read_text().split()
    with ebpf.Link.from_pin(pin) as link:
        assert link.type == ebpf.LinkType.STRUCT_OPS
        link.unpin()
    assert "bpforch_cc" not in AVAILABLE.read_text().split()
