"""Test helpers and fixtures for network namespaces, veth pairs, cgroups and UDP traffic.

Everything here creates its own objects and always removes them, so kernel tests never touch
the machine's interfaces or the root cgroup.

Fixtures (registered for every test through ``pytest_plugins`` in ``tests/conftest.py``):

- ``netns`` -> :class:`NetNS`: a fresh, empty network namespace (``lo`` is up).
- ``veth`` -> :class:`VethPair`: two fresh namespaces ``a`` and ``b`` joined by a veth
  pair; ``a.addr``/``b.addr`` are IPv4 addresses in 10.199.0.0/24, neighbours are static
  (no ARP) and IPv6 is off, so the only packets on the wire are the ones a test sends.
- ``netns_factory`` -> ``make() -> NetNS`` for tests that need more namespaces.
- ``cgroup`` -> :class:`Cgroup`: a fresh cgroup v2 directory under the cgroup v2 mount
  (:data:`CGROUP2_ROOT`, read from /proc/self/mountinfo); processes started with
  :meth:`Cgroup.spawn`/:meth:`Cgroup.run` begin life inside it (so the sockets they create
  belong to it).

Traffic: :func:`send_udp`, :class:`UdpReceiver`, :class:`UdpStream` (a background sender
that counts every datagram it handed to the kernel). Sockets are created inside a namespace
(with ``setns`` on the calling thread, and back) and stay bound to it, so tests can send from
the main thread without entering anything.

Without pytest (benchmarks, demos): ``with netns_pair() as pair: ...`` and
``with temp_cgroup() as cg: ...`` do the same setup and cleanup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.ebpf.inspect import in_netns
from orchestrator.ebpf.mounts import find_mount

NETNS_DIR = Path("/var/run/netns")
# where this host mounts cgroup v2, as bpforch finds it (/sys/fs/cgroup on a pure cgroup v2
# host, /sys/fs/cgroup/unified with the hybrid layout); None if it is not mounted
CGROUP2_MOUNT = find_mount("cgroup2")
CGROUP2_ROOT = CGROUP2_MOUNT if CGROUP2_MOUNT is not None else Path("/sys/fs/cgroup")
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in the socket module
PREFIX = "bpft"  # every namespace/cgroup made here is named bpft-<pid>-<hex>


def _unique(prefix: str = PREFIX) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------------------- namespaces


@dataclass
class NetNS:
    """A named network namespace (``ip netns add``); ``path`` is its bind mount."""

    name: str

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Run the block with the calling thread inside this namespace."""
        with in_netns(self.path):
            yield

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...``."""
        return _run(["ip", "-n", self.name, *args], check=check)

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace with ``nsenter --net`` (unlike ``ip netns
        exec`` this keeps /sys, and with it bpffs, visible)."""
        proc = subprocess.run(
            ["nsenter", f"--net={self.path}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.name} failed: {proc.stderr.strip()}")
        return proc

    def ifindex(self, ifname: str) -> int:
        with self.enter():
            return socket.if_nametoindex(ifname)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in this namespace (usable from any thread)."""
        with self.enter():
            return socket.socket(family, kind)

    def sysctl(self, key: str, value: str) -> None:
        with self.enter():
            Path("/proc/sys", *key.split(".")).write_text(value)

    def delete(self) -> None:
        if self.path.exists():
            _run(["ip", "netns", "del", self.name], check=False)

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"


def create_netns(prefix: str = PREFIX) -> NetNS:
    """A fresh namespace with ``lo`` up. Delete it with :meth:`NetNS.delete`."""
    ns = NetNS(_unique(prefix))
    _run(["ip", "netns", "add", ns.name])
    try:
        ns.ip("link", "set", "dev", "lo", "up")
    except BaseException:
        ns.delete()
        raise
    return ns


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces and cgroups left by test processes that no longer run (a killed
    pytest); those of live processes (other test runs on this machine) are kept."""
    removed: list[str] = []

    def dead(name: str) -> bool:
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != prefix or not parts[1].isdigit():
            return False
        return not Path(f"/proc/{parts[1]}").exists()

    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if dead(entry.name):
                NetNS(entry.name).delete()
                removed.append(str(entry))
    if CGROUP2_ROOT.is_dir():
        for entry in CGROUP2_ROOT.iterdir():
            if entry.is_dir() and dead(entry.name):
                with contextlib.suppress(OSError):
                    Cgroup(entry).remove()
                    removed.append(str(entry))
    return removed


# ---------------------------------------------------------------------------- veth


@dataclass(frozen=True)
class VethEnd:
    """One end of a veth pair: its namespace, name, ifindex, IPv4 address and MAC."""

    ns: NetNS
    name: str
    ifindex: int
    addr: str
    mac: str

    def socket(self, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        return self.ns.socket(socket.AF_INET, kind)


@dataclass(frozen=True)
class VethPair:
    """Two namespaces joined by a veth pair (``a`` and ``b``)."""

    a: VethEnd
    b: VethEnd

    def delete(self) -> None:
        self.a.ns.delete()
        self.b.ns.delete()


def create_veth(
    ns_a: NetNS,
    ns_b: NetNS,
    *,
    addr_a: str = "10.199.0.1",
    addr_b: str = "10.199.0.2",
    prefixlen: int = 24,
) -> VethPair:
    """A veth pair between two namespaces, up, addressed, with static neighbours and IPv6
    off, so no ARP/ND/MLD packet appears unless a test sends one."""
    tag = uuid.uuid4().hex[:6]
    name_a, name_b = f"va{tag}", f"vb{tag}"
    _run(
        [
            "ip", "link", "add", name_a, "netns", ns_a.name,
            "type", "veth", "peer", "name", name_b, "netns", ns_b.name,
        ]
    )  # fmt: skip
    ends: list[VethEnd] = []
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        ns.sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1")
        ns.ip("addr", "add", f"{addr}/{prefixlen}", "dev", name)
        out = ns.ip("-o", "link", "show", "dev", name).stdout
        lladdr = out.split("link/ether", 1)[1].split()[0]
        ends.append(VethEnd(ns, name, ns.ifindex(name), addr, lladdr))
    a, b = ends
    for here, there in ((a, b), (b, a)):
        here.ns.ip(
            "neigh", "replace", there.addr, "lladdr", there.mac, "dev", here.name,
            "nud", "permanent",
        )  # fmt: skip
    for end in ends:
        end.ns.ip("link", "set", "dev", end.name, "up")
    return VethPair(a, b)


@contextlib.contextmanager
def netns_pair() -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth pair; everything removed afterwards."""
    ns_a = create_netns()
    try:
        ns_b = create_netns()
        try:
            yield create_veth(ns_a, ns_b)
        finally:
            ns_b.delete()
    finally:
        ns_a.delete()


# ---------------------------------------------------------------------------- traffic


def send_udp(
    src: VethEnd,
    dst: VethEnd,
    port: int,
    count: int = 1,
    payload: bytes = b"bpforch",
    *,
    src_port: int = 0,
) -> int:
    """Send ``count`` UDP datagrams from ``src`` to ``dst``:``port``; returns how many the
    kernel accepted (all of them, or it raises)."""
    with src.socket() as sock:
        sock.bind((src.addr, src_port))
        for _ in range(count):
            sock.sendto(payload, (dst.addr, port))
    return count


class UdpReceiver:
    """A UDP socket bound to ``end.addr``:``port`` in its namespace; counts what arrives."""

    def __init__(self, end: VethEnd, port: int) -> None:
        self.sock = end.socket()
        try:
            # room for a whole burst: drain() reads only when the test asks
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
            self.sock.bind((end.addr, port))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.received = 0

    def drain(self, settle: float = 0.05) -> int:
        """Read everything that arrived (waiting ``settle`` s for stragglers); returns the
        total received so far."""
        deadline = time.monotonic() + settle
        while True:
            try:
                self.sock.recv(65536)
                self.received += 1
                deadline = time.monotonic() + settle
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return self.received
                time.sleep(0.002)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UdpStream:
    """A background thread that sends UDP datagrams from ``src`` to ``dst``:``port`` until
    stopped, ``interval`` seconds apart (0: as fast as possible). ``sent`` counts every
    datagram the kernel accepted; a refused send (ENOBUFS …) is retried, never counted."""

    def __init__(self, src: VethEnd, dst: VethEnd, port: int, *, interval: float = 0.0005) -> None:
        self.src, self.dst, self.port, self.interval = src, dst, port, interval
        self.sent = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._sock = src.socket()
        self._sock.bind((src.addr, 0))
        self._thread = threading.Thread(target=self._loop, name="udp-stream", daemon=True)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._sock.sendto(b"stream", (self.dst.addr, self.port))
                except (BlockingIOError, OSError) as err:
                    if getattr(err, "errno", None) not in (105, 11):  # ENOBUFS, EAGAIN
                        raise
                    time.sleep(0.001)
                    continue
                self.sent += 1
                if self.interval:
                    time.sleep(self.interval)
        except BaseException as err:
            self.errors.append(err)

    def start(self) -> UdpStream:
        self._thread.start()
        return self

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        """Block until at least ``n`` datagrams were sent."""
        deadline = time.monotonic() + timeout
        while self.sent < n:
            if time.monotonic() > deadline or self.errors:
                raise AssertionError(f"udp stream sent only {self.sent} of {n}: {self.errors}")
            time.sleep(0.001)

    def stop(self) -> int:
        """Stop sending; returns the number of datagrams sent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()
        if self.errors:
            raise AssertionError(f"udp stream failed: {self.errors[0]!r}") from self.errors[0]
        return self.sent

    def __enter__(self) -> UdpStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()


# ---------------------------------------------------------------------------- cgroups


@dataclass
class Cgroup:
    """A cgroup v2 directory. Processes started with :meth:`spawn` are in it before the
    command starts (the child moves itself into ``cgroup.procs``, then execs)."""

    path: Path
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def spawn(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the cgroup: a shell writes its own pid to ``cgroup.procs``
        and then execs the command (no ``preexec_fn``, which is unsafe with threads)."""
        procs = str(self.path / "cgroup.procs")
        script = 'echo $$ > "$0" && exec "$@"'
        child: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["/bin/sh", "-c", script, procs, *argv], **kwargs
        )
        self._children.append(child)
        return child

    def run(
        self, argv: Sequence[str], *, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        child = self.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = child.communicate(timeout=timeout)
        proc = subprocess.CompletedProcess(list(argv), child.returncode, out, err)
        if check and child.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.path} failed: {err.decode()}")
        return proc

    def run_python(self, code: str, *, netns: NetNS | None = None) -> str:
        """Run ``python -c code`` inside the cgroup (and a namespace); returns stdout."""
        argv = [sys.executable, "-c", code]
        if netns is not None:
            argv = ["nsenter", f"--net={netns.path}", *argv]
        return self.run(argv).stdout.decode()

    def procs(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split()]

    @property
    def id(self) -> int:
        """The cgroup id (its inode number), as BPF reports it."""
        return os.stat(self.path).st_ino

    def remove(self) -> None:
        """Kill what still runs inside, then remove the directory (children first)."""
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait()
        for sub in sorted((p for p in self.path.rglob("*") if p.is_dir()), reverse=True):
            _kill_and_rmdir(sub)
        _kill_and_rmdir(self.path)


def _kill_and_rmdir(path: Path) -> None:
    if not path.exists():
        return
    kill = path / "cgroup.kill"
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        if kill.exists():
            kill.write_text("1")
        else:
            for pid in Cgroup(path).procs():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def create_cgroup(parent: Path = CGROUP2_ROOT) -> Cgroup:
    if not (parent / "cgroup.procs").exists():
        raise RuntimeError(f"{parent} is not a cgroup v2 directory")
    path = parent / _unique()
    path.mkdir()
    return Cgroup(path)


@contextlib.contextmanager
def temp_cgroup() -> Iterator[Cgroup]:
    cg = create_cgroup()
    try:
        yield cg
    finally:
        cg.remove()


# ---------------------------------------------------------------------------- fixtures


def _require_tools() -> None:
    from tests.conftest import require_kernel, require_tool

    require_kernel()
    require_tool("ip")
    require_tool("nsenter")


_swept = False


def _sweep_once() -> None:
    global _swept
    if not _swept:
        _swept = True
        remove_stale()


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], NetNS]]:
    """``make() -> NetNS``: fresh namespaces, all deleted after the test."""
    _require_tools()
    _sweep_once()
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = create_netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.delete()


@pytest.fixture
def netns(netns_factory: Callable[[], NetNS]) -> NetNS:
    """A fresh network namespace (lo up), deleted after the test."""
    return netns_factory()


@pytest.fixture
def veth(netns_factory: Callable[[], NetNS]) -> VethPair:
    """Two fresh namespaces joined by a quiet veth pair (see the module docstring)."""
    return create_veth(netns_factory(), netns_factory())


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    """A fresh cgroup v2 directory under the cgroup v2 mount, removed afterwards."""
    from tests.conftest import require_kernel

    require_kernel()
    if CGROUP2_MOUNT is None or not (CGROUP2_ROOT / "cgroup.procs").exists():
        why = "cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    _sweep_once()
    with temp_cgroup() as cg:
        yield cg
