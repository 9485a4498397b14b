"""Keys and values as literals (orchestrator.ebpf.values): checked against the bytes clang
lays out for initialized globals, so structs, bitfields, unions, byte order and addresses
follow the compiler, not our reading of BTF."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import ebpf
from orchestrator.ebpf import btf
from orchestrator.ebpf.errors import LiteralError
from orchestrator.ebpf.map_codec import LiteralMap, MapCodec
from orchestrator.ebpf.values import (
    Hex,
    NetworkOrder,
    References,
    decode,
    encode,
    plain,
    total,
)

XDP_FILTER = Path("/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_dny_udp.o")

VALUES_C = r"""
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum color { RED = 1, GREEN = 2, BLUE = 40 };
enum level { LOW = -3, HIGH = 5 };
struct flags { __u32 a : 3; __s32 b : 5; __u32 c : 24; };
struct entry {
	__u8 small;
	__s16 delta;
	_Bool on;
	char name[8];
	__u16 ports[3];
	enum color color;
	enum level level;
	struct flags fl;
	__be16 port;
	__be32 saddr;
	__u32 host_addr;
	struct in_addr v4;
	struct in6_addr v6;
	union { __u32 word; __u8 bytes[4]; };
	__u8 mac[6];
	double ratio;
	__s64 big;
};
struct lpm4 { __u32 prefixlen; __u8 addr[4]; };
struct lpm6 { __u32 prefixlen; struct in6_addr addr; };
struct counters { __u64 packets; __u64 bytes; };

struct entry sample = {
	.small = 200, .delta = -2, .on = 1, .name = "web", .ports = {80, 443},
	.color = BLUE, .level = LOW, .fl = {.a = 5, .b = -3, .c = 0xabcdef},
	.port = __bpf_constant_htons(9999), .saddr = __bpf_constant_htonl(0x0a000001),
	.host_addr = __bpf_constant_htonl(0xc0a80001),
	.v4 = {.s_addr = __bpf_constant_htonl(0xc0a80101)},
	.v6 = {.in6_u.u6_addr8 = {0x20, 0x01, 0x0d, 0xb8, [15] = 1}},
	.word = 0x01020304, .mac = {0x02, 0, 0, 0, 0, 0x2a}, .ratio = 0.5,
	.big = -5000000000LL,
};
struct lpm4 sample_lpm4 = {.prefixlen = 8, .addr = {10, 0, 0, 0}};
struct lpm6 sample_lpm6 = {.prefixlen = 32, .addr.in6_u.u6_addr8 = {0x20, 0x01, 0x0d, 0xb8}};
char args[24] = "/bin/true\0--help\0x";

struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, struct entry);
		__uint(max_entries, 16); } entries SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __type(key, struct lpm4); __type(value, __u32);
		__uint(max_entries, 16); __uint(map_flags, BPF_F_NO_PREALLOC); } trie4 SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __type(key, struct lpm6); __type(value, __u32);
		__uint(max_entries, 16); __uint(map_flags, BPF_F_NO_PREALLOC); } trie6 SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32);
		__type(value, struct counters); __uint(max_entries, 4); } stats SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32);
		__type(value, __u32[2]); __uint(max_entries, 4); } pairs SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(key_size, 4); __uint(value_size, 4);
		__uint(max_entries, 4); } jumps SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
	__uint(max_entries, 1024); } big SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_SOCKMAP); __type(key, __u32); __type(value, __u64);
		__uint(max_entries, 4); } socks SEC(".maps");

SEC("socket")
int use_maps(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct lpm4 k4 = {32, {1, 2, 3, 4}};
	struct lpm6 k6 = {.prefixlen = 128};
	if (bpf_map_lookup_elem(&entries, &k) || bpf_map_lookup_elem(&trie4, &k4) ||
		bpf_map_lookup_elem(&trie6, &k6) || bpf_map_lookup_elem(&stats, &k) ||
		bpf_map_lookup_elem(&pairs, &k) || bpf_map_lookup_elem(&socks, &k))
		return 1;
	bpf_tail_call(skb, &jumps, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

SAMPLE = {
    "small": 200,
    "delta": -2,
    "on": True,
    "name": "web",
    "ports": [80, 443, 0],
    "color": "BLUE",
    "level": "LOW",
    "fl": {"a": 5, "b": -3, "c": 0xABCDEF},
    "port": 9999,
    "saddr": 0x0A000001,
    "host_addr": 0x0100A8C0,  # a __u32 holding network order: read as a host integer
    "v4": "192.168.1.1",
    "v6": "2001:db8::1",
    "word": 0x01020304,
    "bytes": [4, 3, 2, 1],
    "mac": [2, 0, 0, 0, 0, 42],
    "ratio": 0.5,
    "big": -5000000000,
}


@pytest.fixture(scope="module")
def spec(compile_bpf: Callable[..., Path]) -> ebpf.CollectionSpec:
    return ebpf.CollectionSpec.from_file(compile_bpf(VALUES_C))


def entry_type(spec: ebpf.CollectionSpec) -> btf.Type:
    t = spec.maps["entries"].value
    assert t is not None
    return t


def fails(t: btf.Type | None, value: object, **kw: object) -> str:
    with pytest.raises(LiteralError) as exc:
        encode(t, value, **kw)  # type: ignore[arg-type]
    return str(exc.value)


# ---------------------------------------------------------------------------- layout


def test_struct_literal_encodes_to_the_bytes_clang_lays_out(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    raw = spec.variables["sample"].raw
    assert decode(t, raw) == SAMPLE
    literal = dict(SAMPLE, saddr="10.0.0.1", host_addr="192.168.0.1")
    literal.pop("bytes")  # one member of the union is enough
    assert encode(t, literal) == raw
    assert encode(t, SAMPLE) == raw  # both members of the union, agreeing


def test_lpm_keys_are_cidrs(spec: ebpf.CollectionSpec) -> None:
    trie4, trie6 = MapCodec.of(spec.maps["trie4"]), MapCodec.of(spec.maps["trie6"])
    raw4, raw6 = spec.variables["sample_lpm4"].raw, spec.variables["sample_lpm6"].raw
    assert trie4.encode_key("10.0.0.0/8") == raw4
    assert trie4.decode_key(raw4) == "10.0.0.0/8"
    assert trie6.encode_key("2001:db8::/32") == raw6
    assert trie6.decode_key(raw6) == "2001:db8::/32"
    # host bits are kept as written (the kernel ignores them); the mapping form works too
    assert trie4.decode_key(trie4.encode_key("10.1.2.3/8")) == "10.1.2.3/8"
    assert trie4.encode_key({"prefixlen": 8, "addr": "10.0.0.0"}) == raw4
    assert trie4.encode_key({"prefixlen": 8, "addr": [10]}) == raw4
    # a prefix longer than the address cannot be a CIDR: shown as its members
    bad = (33).to_bytes(4, "little") + bytes(4)
    assert trie4.decode_key(bad) == {"prefixlen": 33, "addr": [0, 0, 0, 0]}


def test_lpm_cidr_errors(spec: ebpf.CollectionSpec) -> None:
    trie4 = MapCodec.of(spec.maps["trie4"])
    with pytest.raises(LiteralError) as exc:
        trie4.encode_key("10.0.0.0/40")
    assert str(exc.value) == "key: '10.0.0.0/40' is not an IPv4 CIDR (like 10.0.0.0/8)"
    with pytest.raises(LiteralError) as exc:
        trie4.encode_key("2001:db8::/32")
    assert str(exc.value) == "key: '2001:db8::/32' is not an IPv4 CIDR (the key has 8 bytes)"


def test_text_arrays(spec: ebpf.CollectionSpec) -> None:
    t = spec.variables["args"].type
    assert t is not None
    raw = spec.variables["args"].raw
    # NULs inside separate strings (execve arguments); trailing NULs are padding
    assert decode(t, raw) == "/bin/true\0--help\0x"
    assert encode(t, "/bin/true\0--help\0x") == raw
    name = entry_type(spec)
    assert fails(name, {"name": "a-long-name"}) == (
        "value.name: 'a-long-name' is 11 bytes, char[8] holds 8"
    )
    # bytes that are not text read back as numbers, which encode to the same bytes
    arr = btf.Array(btf.Int("char", 1, signed=True), btf.Int("int", 4), 4)
    assert decode(arr, b"\xff\x01ab") == [-1, 1, 97, 98]
    assert encode(arr, [-1, 1, 97, 98]) == b"\xff\x01ab"


def test_integer_ranges_and_kinds(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    assert fails(t, {"small": 256}) == "value.small: 256 does not fit __u8 (1 byte, unsigned)"
    assert fails(t, {"small": -1}) == "value.small: -1 does not fit __u8 (1 byte, unsigned)"
    assert fails(t, {"delta": 40000}) == "value.delta: 40000 does not fit __s16 (2 bytes, signed)"
    assert fails(t, {"small": True}) == "value.small: expected an integer for __u8, got a bool"
    assert fails(t, {"small": "x"}) == "value.small: expected an integer for __u8, got a string"
    assert fails(t, {"on": 1}) == "value.on: expected true or false for _Bool, got an integer"
    assert fails(t, {"fl": {"a": 8}}) == ("value.fl.a: 8 does not fit __u32 (3 bits, unsigned)")
    assert fails(t, {"fl": {"b": -17}}) == "value.fl.b: -17 does not fit __s32 (5 bits, signed)"
    assert fails(t, {"ports": [1, 2, 3, 4]}) == "value.ports: 4 elements do not fit __u16[3]"
    assert fails(t, {"ports": [1, 70000]}) == (
        "value.ports[1]: 70000 does not fit __u16 (2 bytes, unsigned)"
    )
    assert fails(t, {"big": 1 << 63}) == (
        "value.big: 9223372036854775808 does not fit __s64 (8 bytes, signed)"
    )
    assert fails(t, {"ratio": "half"}) == "value.ratio: expected a number for double, got a string"


def test_structs_name_members(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    assert fails(t, {"colour": "RED"}) == (
        "value.colour: struct entry has no member 'colour' (did you mean color?)"
    )
    assert fails(t, ["x"]) == "value: expected a mapping of members for struct entry, got a list"
    assert fails(t, {"fl": 3}) == (
        "value.fl: expected a mapping of members for struct flags, got an integer"
    )
    # members left out are zero
    assert encode(t, {}) == bytes(btf.sizeof(t))


def test_enums(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    assert decode(t, encode(t, {"color": 2}))["color"] == "GREEN"  # type: ignore[index]
    assert decode(t, encode(t, {"color": 7}))["color"] == 7  # type: ignore[index]
    assert fails(t, {"color": "BLU"}) == (
        "value.color: enum color has no enumerator 'BLU' (did you mean BLUE?)"
    )
    assert decode(t, encode(t, {"level": -3}))["level"] == "LOW"  # type: ignore[index]


def test_unions_must_agree_where_members_overlap(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    assert fails(t, {"word": 1, "bytes": [2]}) == (
        "value: members word and bytes of union {...} overlap and disagree (give one of them)"
    )
    ok = encode(t, {"word": 0x0201, "bytes": [1, 2]})
    assert decode(t, ok)["bytes"] == [1, 2, 0, 0]  # type: ignore[index]


def test_addresses(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    assert fails(t, {"saddr": "10.0.0.300"}) == "value.saddr: '10.0.0.300' is not an IPv4 address"
    assert fails(t, {"v4": "::1"}) == (
        "value.v4: '::1' is not an IPv4 address (the field has 4 bytes)"
    )
    assert fails(t, {"v6": "10.0.0.1"}) == (
        "value.v6: '10.0.0.1' is not an IPv6 address (the field has 16 bytes)"
    )
    # a string into a 4-byte field is an address in network order, whatever the field's type
    data = encode(t, {"host_addr": "10.1.2.3", "mac": [1]})
    got = decode(t, data)
    assert got["host_addr"] == int.from_bytes(socket.inet_aton("10.1.2.3"), "little")  # type: ignore[index]
    assert fails(t, {"mac": "10.0.0.1"}) == "value.mac: expected a list for __u8[6], got a string"


def test_network_order_override_on_the_real_xdp_filter_key() -> None:
    """xdp-filter's filter_ports key is a __u32 holding udp->dest (a __be16): port 9999 is
    the bytes 27 0f 00 00 (``bpftool map update … key 0x27 0x0f 0 0``)."""
    spec = ebpf.CollectionSpec.from_file(XDP_FILTER)
    m = spec.maps["filter_ports"]
    codec = MapCodec.of(m, ncpus=2)
    assert codec.encode_key(NetworkOrder(16, 9999)) == bytes([0x27, 0x0F, 0, 0])
    assert codec.decode_key(bytes([0x27, 0x0F, 0, 0])) == 0x0F27  # the BTF type says __u32
    be = MapCodec.of(m, ncpus=2, key_format="be16")
    assert be.encode_key(9999) == bytes([0x27, 0x0F, 0, 0])
    assert be.decode_key(bytes([0x27, 0x0F, 0, 0])) == NetworkOrder(16, 9999)
    assert plain(be.decode_key(bytes([0x27, 0x0F, 0, 0]))) == 9999
    # a key that is no __be16 (upper bytes set) is shown as raw bytes, not misread
    assert be.decode_key(bytes([1, 2, 3, 4])) == Hex(bytes([1, 2, 3, 4]))
    with pytest.raises(LiteralError) as exc:
        codec.encode_key(NetworkOrder(64, 1))
    assert str(exc.value) == "key: !be64 does not fit __u32 (4 bytes)"


def test_network_order_on_typed_fields(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    plain_port = encode(t, {"port": 9999})
    assert encode(t, {"port": NetworkOrder(16, 9999)}) == plain_port
    assert fails(t, {"port": NetworkOrder(32, 9999)}) == (
        "value.port: __be16 is already 16-bit network order (write the number, or !be16)"
    )
    assert fails(t, {"fl": {"a": NetworkOrder(16, 1)}}) == (
        "value.fl.a: a bitfield (3 bits) has no byte order"
    )
    # into a signed field, the bit pattern is kept
    got = decode(t, encode(t, {"delta": NetworkOrder(16, 0x0080)}))
    assert got["delta"] == int.from_bytes(b"\x00\x80", "little", signed=True)  # type: ignore[index]
    with pytest.raises(ValueError, match="does not fit !be16"):
        NetworkOrder(16, 70000)


def test_hex_fits_any_field_of_its_size(spec: ebpf.CollectionSpec) -> None:
    t = entry_type(spec)
    size = btf.sizeof(t)
    assert encode(t, Hex(b"\x01" * size)) == b"\x01" * size
    assert fails(t, {"mac": Hex(b"\x01")}) == "value.mac: !hex has 1 bytes, __u8[6] has 6"
    assert Hex.parse("27:0f 00-00") == Hex(bytes([0x27, 0x0F, 0, 0]))
    with pytest.raises(ValueError, match="is not hex bytes"):
        Hex.parse("xyz")


def test_without_btf() -> None:
    assert encode(None, 7, size=4) == (7).to_bytes(4, "little")
    assert decode(None, (7).to_bytes(4, "little")) == 7
    assert decode(None, b"\x01\x02\x03") == Hex(b"\x01\x02\x03")
    assert encode(None, Hex(b"\x01\x02\x03"), size=3) == b"\x01\x02\x03"
    assert fails(None, 7, size=3) == (
        "value: expected !hex of 3 bytes (the field has no BTF type), got an integer"
    )
    assert fails(None, -1, size=4) == "value: -1 does not fit 4 bytes (unsigned, no BTF)"
    assert encode(None, "10.0.0.1", size=4) == socket.inet_aton("10.0.0.1")


def test_per_cpu_values(spec: ebpf.CollectionSpec) -> None:
    stats = MapCodec.of(spec.maps["stats"], ncpus=3)
    one = {"packets": 1, "bytes": 100}
    data = stats.encode_value(one)
    assert len(data) == 3 * 16
    assert stats.decode_value(data) == [one, one, one]
    per = [one, {"packets": 2}, {"bytes": 5}]
    got = stats.decode_value(stats.encode_value(per))
    assert got == [one, {"packets": 2, "bytes": 0}, {"packets": 0, "bytes": 5}]
    assert total(got) == {"packets": 3, "bytes": 105}  # type: ignore[arg-type]
    with pytest.raises(LiteralError) as exc:
        stats.encode_value([one, one])
    assert str(exc.value) == (
        "value: a per-CPU value takes one value, or one for each of the 3 possible CPUs; "
        "got a list of 2"
    )
    with pytest.raises(LiteralError) as exc:
        stats.encode_value([one, {"packet": 1}, one])
    assert str(exc.value) == (
        "value[1].packet: struct counters has no member 'packet' (did you mean packets?)"
    )
    # the value type is an array: a list is one value, a list of lists one per CPU
    pairs = MapCodec.of(spec.maps["pairs"], ncpus=2)
    assert pairs.decode_value(pairs.encode_value([1, 2])) == [[1, 2], [1, 2]]
    assert pairs.decode_value(pairs.encode_value([[1], [3, 4]])) == [[1, 0], [3, 4]]
    assert total([[1, 0], [3, 4]]) == [4, 4]
    assert total(["a", "b"]) is None


def test_prog_arrays_take_program_names(spec: ebpf.CollectionSpec) -> None:
    jumps = MapCodec.of(
        spec.maps["jumps"], refs=References(programs={"use_maps": 7}, program_ids={42: "use_maps"})
    )
    assert jumps.encode_value("use_maps") == (7).to_bytes(4, "little")
    assert jumps.decode_value((42).to_bytes(4, "little")) == "use_maps"
    assert jumps.decode_value((43).to_bytes(4, "little")) == 43  # not one of ours: the id
    with pytest.raises(LiteralError) as exc:
        jumps.encode_value("use_map")
    assert str(exc.value) == "value: no program named 'use_map' (did you mean use_maps?)"
    with pytest.raises(LiteralError) as exc:
        jumps.encode_value(3)
    assert str(exc.value) == (
        "value: expected the name of a program for a prog_array map, got an integer"
    )


def test_maps_of_maps_take_map_names() -> None:
    spec = ebpf.CollectionSpec.from_file(Path(__file__).parents[2] / "bpf" / "map_types.o")
    outer = MapCodec.of(
        spec.maps["m_array_of_maps"], refs=References(maps={"inner": 11}, map_ids={5: "inner"})
    )
    assert outer.encode_value("inner") == (11).to_bytes(4, "little")
    assert outer.decode_value((5).to_bytes(4, "little")) == "inner"
    with pytest.raises(LiteralError) as exc:
        outer.encode_value("inne")
    assert str(exc.value) == "value: no map named 'inne' (did you mean inner?)"


def test_fd_valued_maps_are_refused(spec: ebpf.CollectionSpec) -> None:
    socks = MapCodec.of(spec.maps["socks"])
    with pytest.raises(LiteralError) as exc:
        socks.encode_value(1)
    assert str(exc.value) == (
        "value: the values of a sockmap map are socket fds (the process that owns the "
        "sockets writes them): bpforch does not write them"
    )


def test_data_sections_by_variable() -> None:
    spec = ebpf.CollectionSpec.from_file(Path(__file__).parents[2] / "bpf" / "globals.o")
    codec = MapCodec.of(spec.maps[".rodata"])
    raw = bytes(spec.maps[".rodata"].contents[0].value)
    got = codec.decode_value(raw)
    assert isinstance(got, dict)
    assert got["c_name"] == "globals" and got["c_s16"] == -2 and got["c_enabled"] is True
    assert codec.encode_value(got) == raw
    with pytest.raises(LiteralError) as exc:
        codec.encode_value({"c_nam": "x"})
    assert str(exc.value) == "value: section .rodata has no variable 'c_nam' (did you mean c_name?)"


def test_plain_is_json_data() -> None:
    assert plain({"a": [NetworkOrder(16, 1), Hex(b"\x01")], "b": float("inf")}) == {
        "a": [1, "01"],
        "b": "inf",
    }


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(min_size=96, max_size=96))
def test_round_trip_of_random_values(spec: ebpf.CollectionSpec, raw: bytes) -> None:
    t = entry_type(spec)
    size = btf.sizeof(t)
    raw = raw[:size].ljust(size, b"\0")
    literal = decode(t, raw)
    again = decode(t, encode(t, literal))
    # NaN is not equal to itself
    if isinstance(literal, dict) and literal["ratio"] != literal["ratio"]:
        assert again["ratio"] != again["ratio"]  # type: ignore[index]
        literal.pop("ratio")
        again.pop("ratio")  # type: ignore[union-attr]
    assert again == literal


# ---------------------------------------------------------------------------- kernel


@pytest.mark.kernel
def test_live_map_types_come_from_the_kernels_btf(spec: ebpf.CollectionSpec, pin_dir: Path) -> None:
    """A map opened by its pin is typed by the BTF the kernel holds for it."""
    with ebpf.Collection(spec) as coll:
        coll.maps["entries"].pin(pin_dir / "entries")
        coll.maps["trie4"].pin(pin_dir / "trie4")
        with ebpf.Map.from_pin(pin_dir / "entries") as m:
            codec = MapCodec.of(m)
            assert codec.value_type is not None
            assert btf.describe(codec.value_type) == "struct entry"
            from orchestrator.ebpf import _sys as bpfsys

            bpfsys.map_update_elem(m.fd, codec.encode_key(3), codec.encode_value(SAMPLE), 0)
            raw = bpfsys.map_lookup_elem(m.fd, codec.encode_key(3), codec.value_buffer_size)
            assert codec.decode_value(raw) == SAMPLE
        with ebpf.Map.from_pin(pin_dir / "trie4") as m:
            codec = MapCodec.of(m)
            bpfsys.map_update_elem(m.fd, codec.encode_key("10.0.0.0/8"), codec.encode_value(1), 0)
            hit = (32).to_bytes(4, "little") + ipaddress.ip_address("10.9.8.7").packed
            assert codec.decode_value(bpfsys.map_lookup_elem(m.fd, hit, 4)) == 1
            # an LPM trie has no batch lookup: its entries are read key by key
            lm = LiteralMap(m, codec)
            lm.update("192.168.0.0/16", 2)
            assert sorted(lm.items()) == [("10.0.0.0/8", 1), ("192.168.0.0/16", 2)]  # type: ignore[type-var]
        # a hash read in batches of 256: every entry once
        big = LiteralMap(coll.maps["big"])
        for i in range(600):
            big.update(i, i * 3)
        assert sorted(big.items()) == [(i, i * 3) for i in range(600)]  # type: ignore[type-var]
    assert os.path.exists(pin_dir / "entries")


@pytest.mark.kernel
def test_live_data_sections_are_typed_by_their_datasec(pin_dir: Path) -> None:
    spec = ebpf.CollectionSpec.from_file(Path(__file__).parents[2] / "bpf" / "globals.o")
    with ebpf.Collection(spec) as coll:
        coll.maps[".data"].pin(pin_dir / "data")
        with ebpf.Map.from_pin(pin_dir / "data") as m:
            lm = LiteralMap(m)
            got = lm.lookup(0)
            assert got == {
                "d_runs": 5,
                "d_last": {"x": 1, "y": 2, "tag": [100, 97, 116, 0]},
                "d_greeting": "hello",
            }
            lm.update(0, {"d_runs": 6, "d_greeting": "bye"})
            assert lm.lookup(0) == {
                "d_runs": 6,
                "d_last": {"x": 0, "y": 0, "tag": [0, 0, 0, 0]},  # left out: zero
                "d_greeting": "bye",
            }
