"""``bpforch events``: Debian libbpf-tools' opensnoop loaded through a manifest, its perf
event array read while the test opens files; a ring buffer filled by an XDP program on a
veth pair between two namespaces the test creates, decoded through the program's BTF."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.commands.conftest import Cli
from tests.conftest import ROOT
from tests.ebpf.conftest import extract_objects
from tests.netns import VethPair, send_udp

pytestmark = pytest.mark.kernel

# struct event of Debian's opensnoop (libbpf-tools 0.26, opensnoop.h): not in the object's
# BTF (only a local variable has that type), so the test declares it for --btf
OPENSNOOP_EVENT_C = r"""
#include <linux/types.h>
struct event {
	__u64 ts;
	int pid;
	unsigned int uid;
	int ret;
	int flags;
	__u64 callers[2];
	char comm[16];
	char fname[255];
};
struct event opensnoop_event;
"""

RINGBUF_C = r"""
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct packet {
	__u32 ifindex;
	__u32 len;
	__be32 saddr;
	__be16 dport;
	char payload[10];
};
struct packet last_packet;  /* gives the type to the object's BTF */

struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 16384); } packets SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u32);
		__uint(max_entries, 4); } other SEC(".maps");

SEC("xdp")
int watch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	char *payload = (void *)(udp + 1);
	struct packet *p;
	__u32 k = 0;

	if (bpf_map_lookup_elem(&other, &k))
		return XDP_PASS;
	if ((void *)(payload + 10) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
		ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(7777))
		return XDP_PASS;
	p = bpf_ringbuf_reserve(&packets, sizeof(*p), 0);
	if (!p)
		return XDP_PASS;
	p->ifindex = ctx->ingress_ifindex;
	p->len = end - data;
	p->saddr = ip->saddr;
	p->dport = udp->dest;
	__builtin_memcpy(p->payload, payload, 10);
	bpf_ringbuf_submit(p, 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def opensnoop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = Path("/usr/sbin/opensnoop")
    if not binary.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("libbpf-tools is not installed (.ci/setup installs it)")
        pytest.skip("libbpf-tools is not installed")
    [data] = extract_objects(binary.read_bytes())
    path = tmp_path_factory.mktemp("opensnoop") / "opensnoop.bpf.o"
    path.write_bytes(data)
    return path


def stream(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli.argv("events", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
    )  # fmt: skip


def drive(proc: subprocess.Popen[str], poke: Callable[[], None], limit: float = 30) -> str:
    """Call ``poke`` until ``proc`` exits (it stops after --count records); its stdout."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        poke()
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return out


def apply_opensnoop(cli: Cli, obj: Path) -> None:
    cli.write(
        "opensnoop",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: opensnoop}}
        spec:
          object: {obj}
          constants: {{targ_tgid: {os.getpid()}}}   # only this test's opens
          attach:
            - {{program: tracepoint__syscalls__sys_enter_openat,
                tracepoint: {{group: syscalls, name: sys_enter_openat}}}}
            - {{program: tracepoint__syscalls__sys_exit_openat,
                tracepoint: {{group: syscalls, name: sys_exit_openat}}}}
        """,
    )
    cli.ok("apply", str(cli.manifests))


def opener(tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    path = tmp_path / f"opened-{uuid.uuid4().hex[:8]}"
    path.write_text("x")

    def poke() -> None:
        with open(path):
            pass

    return path, poke


def test_opensnoop_events_as_hex(cli: Cli, opensnoop: Path, tmp_path: Path) -> None:
    apply_opensnoop(cli, opensnoop)
    path, poke = opener(tmp_path)
    out = drive(stream(cli, "opensnoop/events", "--count", "3", "--output", "json"), poke)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for rec in records:
        assert set(rec) == {"cpu", "hex"}
        data = bytes.fromhex(rec["hex"])
        assert len(data) >= 312  # struct event, padded by perf
        pid, _uid, ret = struct.unpack_from("<iIi", data, 8)
        fname = data[56 : 56 + 255].split(b"\0")[0].decode()
        assert (pid, fname) == (os.getpid(), str(path))
        assert ret >= 0  # the fd it opened


def test_opensnoop_events_decoded_through_btf(
    cli: Cli, opensnoop: Path, tmp_path: Path, compile_bpf: Callable[..., Path]
) -> None:
    apply_opensnoop(cli, opensnoop)
    header = compile_bpf(OPENSNOOP_EVENT_C)
    path, poke = opener(tmp_path)
    out = drive(
        stream(cli, "opensnoop/events", "--count", "2", "--type", "event", "--btf", str(header)),
        poke,
    )
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("{cpu: ")
        assert f"pid: {os.getpid()}, " in line
        assert f"fname: {path}}}}}" in line
    # the same, as JSON
    out = drive(
        stream(
            cli, "opensnoop/events", "--count", "1", "--type", "event", "--btf", str(header),
            "--output", "json",
        ),
        poke,
    )  # fmt: skip
    [rec] = [json.loads(line) for line in out.splitlines()]
    event = rec["event"]
    assert (event["pid"], event["fname"]) == (os.getpid(), str(path))
    assert event["uid"] == os.getuid() and event["ret"] >= 0
    with open(f"/proc/{os.getpid()}/comm") as f:
        assert event["comm"] == f.read().strip()


def apply_watcher(cli: Cli, veth: VethPair, obj: Path) -> None:
    cli.write(
        "watcher",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: watcher}}
        spec:
          object: {obj}
          attach:
            - program: watch
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    cli.ok("apply", str(cli.manifests))


def test_ring_buffer_records_of_real_traffic(
    cli: Cli, veth: VethPair, compile_bpf: Callable[..., Path]
) -> None:
    apply_watcher(cli, veth, compile_bpf(RINGBUF_C))
    out = drive(
        stream(cli, "watcher/packets", "--count", "4", "--type", "packet", "-o", "json"),
        lambda: send_udp(veth.a, veth.b, 7777, payload=b"0123456789-tail"),
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4
    for rec in records:
        assert rec == {
            "event": {
                "ifindex": veth.b.ifindex,
                "len": 14 + 20 + 8 + 15,
                "saddr": 0x0AC70001,  # a __be32 is a number (10.199.0.1)
                "dport": 7777,
                "payload": "0123456789",
            }
        }
    # without --type: hex, and a time limit instead of a count; the ring buffer kept what
    # arrived after the first reader stopped, and gives it to this one first
    proc = stream(cli, "watcher/packets", "--timeout", "1.5")
    time.sleep(0.7)
    send_udp(veth.a, veth.b, 7777, payload=b"abcdefghij")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    head = struct.pack("<II", veth.b.ifindex, 52).hex() + "0ac70001" + "1e61"
    *earlier, last = out.splitlines()
    assert last == "{hex: " + head + b"abcdefghij".hex() + "}"
    leftover = "{hex: " + struct.pack("<II", veth.b.ifindex, 57).hex() + "0ac70001" + "1e61"
    assert all(line == leftover + b"0123456789".hex() + "}" for line in earlier)


def test_errors(cli: Cli, veth: VethPair, compile_bpf: Callable[..., Path]) -> None:
    apply_watcher(cli, veth, compile_bpf(RINGBUF_C))
    err = cli.fails("events", "watcher/other")
    assert err == (
        "error: map watcher/other: a hash map has no event stream (events reads ring buffers "
        "and perf event arrays; see bpforch map dump)\n"
    )
    err = cli.fails("map", "dump", "watcher/packets")
    assert err == (
        "error: map watcher/packets: a ringbuf map holds a stream, not entries (read it with "
        "bpforch events)\n"
    )
    err = cli.fails("events", "watcher/packets", "--type", "packt")
    assert err == (
        "error: --type packt: collection watcher: its programs' BTF has no type 'packt' (did "
        "you mean packet?)\n"
    )
    err = cli.fails("events", "watcher/packets", "--count", "0")
    assert err == "error: --count 0: give a positive number\n"
    err = cli.fails("events", "watcher/packets", "--timeout", "-1")
    assert err == "error: --timeout -1.0: give a number of seconds (0 or more)\n"
    err = cli.fails("events", "watcher/packets", "--btf", "/nope")
    assert err == "error: --btf names where --type is looked up: give --type too\n"
    err = cli.fails("events", "watcher/packets", "--type", "packet", "--btf", "/nope")
    assert err == "error: --type packet: --btf /nope: no such file or directory\n"
    err = cli.fails("events", "watcher/nosuch")
    assert err == (
        "error: map watcher/nosuch: collection watcher has no map 'nosuch' (it has: other, "
        "packets)\n"
    )


def test_variable_length_records_decode_through_the_programs_btf(cli: Cli, tmp_path: Path) -> None:
    """execsnoop's struct event is in its object's BTF; each record is only as long as the
    arguments it carries (bpf_perf_event_output of part of the struct)."""
    binary = Path("/usr/sbin/execsnoop")
    if not binary.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("libbpf-tools is not installed (.ci/setup installs it)")
        pytest.skip("libbpf-tools is not installed")
    [data] = extract_objects(binary.read_bytes())
    obj = tmp_path / "execsnoop.bpf.o"
    obj.write_bytes(data)
    cli.write(
        "execsnoop",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: execsnoop}}
        spec:
          object: {obj}
          attach:
            - {{program: tracepoint__syscalls__sys_enter_execve,
                tracepoint: {{group: syscalls, name: sys_enter_execve}}}}
            - {{program: tracepoint__syscalls__sys_exit_execve,
                tracepoint: {{group: syscalls, name: sys_exit_execve}}}}
        """,
    )
    cli.ok("apply", str(cli.manifests))
    marker = uuid.uuid4().hex
    proc = stream(cli, "execsnoop/events", "--type", "event", "--timeout", "4", "-o", "json")
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        subprocess.run(["/bin/echo", marker, "x"], capture_output=True, check=True)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    ours = [
        rec
        for rec in map(json.loads, out.splitlines())
        if "event" in rec and marker in rec["event"]["args"]
    ]
    assert ours, out[-2000:]
    for rec in ours:
        event = rec["event"]
        assert event["args"] == f"/bin/echo\0{marker}\0x"
        assert event["args_count"] == 3
        assert event["comm"] == "echo"
        assert rec["size"] < 7720  # the struct's size: the record carries only its arguments
        # the arguments after a 40-byte header, padded by perf to keep its ring aligned
        assert 40 + event["args_size"] <= rec["size"] < 40 + event["args_size"] + 8
