"""The main job: apply the shipped manifests to safe targets, make traffic, show status.

``bpforch demo`` (or ``python -m orchestrator.demo``; root, bpffs mounted) creates the
targets the demo's manifests name (``manifests/`` in a source checkout; installed from a
wheel, the package's copy of them and of their objects): two network namespaces
``bpforch-demo`` and ``bpforch-demo-peer`` joined by a veth pair, and the cgroup
``bpforch-demo`` under the cgroup v2 mount, so nothing touches the machine's own
interfaces or cgroups. Then it runs ``bpforch apply``, sends real UDP packets across the
veth (some to a port the tc filter blocks), makes the syscalls the tracepoint programs
count, shows ``bpforch status`` and the live counters, re-applies to show that nothing
changes, and destroys everything again. ``--keep`` leaves it all applied for you to
explore with ``bpforch status``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from orchestrator import cli, ebpf

# The demo's manifests and objects: orchestrator/_demo/{manifests,bpf}, symlinks to the
# repository's manifests/ and bpf/ in a source checkout, files in a wheel.
DEMO_FILES = Path(__file__).resolve().parent / "_demo"
MANIFESTS = (DEMO_FILES / "manifests").resolve()
NETNS = "bpforch-demo"
PEER = "bpforch-demo-peer"
CGROUP_NAME = "bpforch-demo"  # relative: under the cgroup v2 mount, as in the manifests
DEMO_ADDR, PEER_ADDR = "10.203.0.1", "10.203.0.2"
OPEN_PORT, BLOCKED_PORT = 9999, 12345


def _ip(*args: str) -> None:
    import subprocess

    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _cgroup() -> Path:
    return ebpf.cgroup2_root() / CGROUP_NAME


def _netns_path(name: str) -> Path:
    return Path("/var/run/netns") / name


@contextlib.contextmanager
def targets(keep: bool) -> Iterator[None]:
    """Create the namespaces, the veth pair and the cgroup; remove them afterwards unless
    ``keep`` (or on error)."""
    _remove_targets()
    ok = False
    try:
        _create_targets()
        yield
        ok = True
    finally:
        if not (keep and ok):
            _remove_targets()


def _create_targets() -> None:
    _ip("netns", "add", NETNS)
    _ip("netns", "add", PEER)
    _ip("-n", NETNS, "link", "add", "veth-demo", "type", "veth", "peer", "name", "veth-peer")
    _ip("-n", NETNS, "link", "set", "veth-peer", "netns", PEER)
    for ns, dev, addr in ((NETNS, "veth-demo", DEMO_ADDR), (PEER, "veth-peer", PEER_ADDR)):
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    _cgroup().mkdir(exist_ok=True)


def _remove_targets() -> None:
    for ns in (NETNS, PEER):
        import subprocess

        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    with contextlib.suppress(OSError):
        _cgroup().rmdir()


def _send(count: int, port: int) -> None:
    """``count`` UDP datagrams from the peer namespace to the demo namespace."""
    from orchestrator.ebpf.inspect import in_netns

    with in_netns(_netns_path(PEER)):
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for i in range(count):
            sock.sendto(f"hello {i}".encode(), (DEMO_ADDR, port))


def _send_from_cgroup(count: int) -> None:
    """A child process that starts inside the demo cgroup sends ``count`` datagrams."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range({count}): s.sendto(b'x' * 64, ('{DEMO_ADDR}', {OPEN_PORT}))\n"
    )

    cgroup = _cgroup()

    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    argv = ["nsenter", f"--net={_netns_path(PEER)}", sys.executable, "-c", code]
    import subprocess

    subprocess.run(argv, check=True, preexec_fn=join)


def _syscalls(n: int) -> None:
    import threading

    for _ in range(n):
        os.getppid()
        os.getpid()
        threading.get_native_id()  # gettid()


def _counter(root: Path, collection: str, map_name: str, index: int) -> int:
    with ebpf.Map.from_pin(root / collection / "maps" / map_name) as m:
        value = m[index]
    return int(value) if isinstance(value, int) else 0


def _show_counters(root: Path) -> None:
    rows = [
        ("xdp-counter", "counters", 0, "packets seen by XDP on veth-demo"),
        ("xdp-counter", "counters", 2, "version of the XDP program that saw the last one"),
        ("tc-filter", "stats", 0, "packets passed by the tc filter"),
        ("tc-filter", "stats", 1, f"packets dropped by the tc filter (port {BLOCKED_PORT})"),
        ("tp-counter", "calls", 0, "getppid() calls on this machine"),
        ("cgroup-egress", "egress_stats", 0, "packets sent from the demo cgroup"),
        ("shared-owner", "shared_stats", 0, "getpid() calls (shared-owner's program)"),
        ("shared-owner", "shared_stats", 1, "gettid() calls (shared-user's, same map)"),
    ]
    print("\nLive counters (read from the pinned maps):")
    for coll, name, index, what in rows:
        print(f"  {_counter(root, coll, name, index):>8}  {coll}/{name}[{index}]  {what}")


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bpforch demo`` (added to the command line by ``orchestrator.__main__``)."""
    p = subparsers.add_parser(
        "demo",
        help="apply the shipped example manifests to a veth pair and cgroup it makes",
        description="Create two network namespaces joined by a veth pair and a cgroup, apply "
        "the example manifests to them, send traffic, show status and counters, re-apply "
        "(nothing changes) and destroy it all (unless --keep). Needs root and bpffs.",
    )
    add_arguments(p)
    p.set_defaults(func=lambda args, out, err: run(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (``bpforch demo`` and ``python -m orchestrator.demo``)."""
    from orchestrator.service.cli import add_root_options

    parser.add_argument("--keep", action="store_true", help="leave everything applied")
    add_root_options(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the demo (see the module's docstring); the exit code."""
    if not (MANIFESTS / "xdp-counter.yaml").is_file():
        print(f"error: the demo's manifests are missing from {MANIFESTS} (reinstall)")
        return 1
    where = ["--bpffs-root", str(args.bpffs_root), "--state-dir", str(args.state_dir)]

    def bpforch(*verb: str) -> int:
        print(f"\n$ bpforch {' '.join(verb)}", flush=True)
        return cli.main([*verb, *([] if verb[0] == "validate" else where)])

    with targets(args.keep):
        if bpforch("validate", str(MANIFESTS)) != 0:
            return 1
        if bpforch("plan", str(MANIFESTS)) not in (0, 2):
            return 1
        if bpforch("apply", str(MANIFESTS)) != 0:
            return 1
        try:
            with ebpf.Map.from_pin(args.bpffs_root / "tc-filter/maps/blocked_ports") as m:
                m[BLOCKED_PORT] = 1
            _send(100, OPEN_PORT)
            _send(20, BLOCKED_PORT)
            _send_from_cgroup(10)
            _syscalls(50)
            _show_counters(args.bpffs_root)
            bpforch("status")
            print("\nA second apply with nothing changed does nothing:")
            if bpforch("apply", str(MANIFESTS)) != 0:
                return 1
        finally:
            if not args.keep:
                bpforch("destroy", "--all")
                with contextlib.suppress(OSError):  # only if empty: never someone else's
                    args.bpffs_root.rmdir()
        if args.keep:
            print("\n--keep: everything stays applied; `bpforch destroy --all` removes it.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
