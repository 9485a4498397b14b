"""Reading files safely (``orchestrator.ebpf.files``), the byte-bounded LRU and the
quoting of values in messages: what every reader of objects, manifests, records and BTF
relies on. Nothing here may block: each read runs under a deadline."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.ebpf import ParseError, files, speccache
from orchestrator.ebpf.errors import AttachError, Error, FileError, clip, quote
from orchestrator.ebpf.lru import LRU
from tests.conftest import obj
from tests.deadline import promptly


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 3_000_000)  # several chunks
    assert files.read_file(p, limit=4 << 20) == b"x" * 3_000_000
    assert files.read_text(p, limit=3_000_000) == "x" * 3_000_000


def test_a_fifo_is_refused_without_blocking(fifo: Path) -> None:
    with pytest.raises(FileError) as info:
        promptly(lambda: files.read_file(fifo, limit=100))
    assert info.value.errno == errno.EINVAL and info.value.filename == str(fifo)
    assert info.value.strerror == "not a regular file (a fifo)"
    assert isinstance(info.value, OSError) and isinstance(info.value, Error)
    with pytest.raises(FileError, match="a fifo"):
        promptly(lambda: files.open_file(fifo))


def test_a_writer_waiting_on_the_fifo_is_not_released(fifo: Path) -> None:
    """The FIFO is never opened: a writer blocked in open() stays blocked (opening the read
    side would release it into a broken pipe)."""
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    with pytest.raises(FileError):
        files.read_file(fifo, limit=100)
    assert not opened.wait(0.2)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
    t.join(5)


def test_devices_sockets_and_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileError, match=r"^\[Errno 22\] not a regular file \(a character device\)"):
        promptly(lambda: files.read_file("/dev/zero", limit=1 << 30))
    with pytest.raises(FileError, match="a character device"):
        promptly(lambda: files.read_file("/dev/urandom", limit=1 << 30))
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(FileError, match=r"not a regular file \(a socket\)"):
            files.read_file(sock_path, limit=10)
    with pytest.raises(FileError, match="is a directory") as info:
        files.read_file(tmp_path, limit=10)
    assert info.value.errno == errno.EISDIR


def test_a_symlink_to_a_fifo_is_refused_and_nofollow_refuses_any_symlink(
    tmp_path: Path, fifo: Path
) -> None:
    (tmp_path / "to-fifo").symlink_to(fifo)
    with pytest.raises(FileError, match="a fifo"):
        promptly(lambda: files.read_file(tmp_path / "to-fifo", limit=10))
    (tmp_path / "real").write_text("data")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert files.read_file(tmp_path / "link", limit=10) == b"data"
    with pytest.raises(FileError, match=r"not a regular file \(a symlink\)"):
        files.read_file(tmp_path / "link", limit=10, follow=False)
    assert files.read_file(tmp_path / "real", limit=10, follow=False) == b"data"


def test_the_limit_names_the_size_and_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.o"
    with open(p, "wb") as f:
        f.truncate(80 << 20)  # sparse: 80 MiB that costs nothing to make
    t0 = time.monotonic()
    with pytest.raises(FileError) as info:
        files.read_file(p, limit=files.OBJECT_MAX, what="an object")
    assert time.monotonic() - t0 < 1  # refused from the size, not read
    assert info.value.errno == errno.EFBIG
    assert info.value.strerror == "80.0 MiB, over the 64 MiB limit for an object"
    assert files.read_file(p, limit=80 << 20) == bytes(80 << 20)  # at the limit: fine


def test_a_file_growing_while_read_is_cut_at_the_limit() -> None:
    """procfs files say size 0: the limit holds while reading, not only from fstat."""
    data = files.read_file("/proc/self/status", limit=1 << 20)
    assert b"Name:" in data
    with pytest.raises(FileError, match=r"grew past the 100 bytes limit for a file"):
        files.read_file("/proc/self/status", limit=100)


def test_a_file_is_read_into_one_buffer_of_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is read into one buffer of the size fstat gave and one byte more (to see its
    end), not with a 1 MiB buffer per read; a size-0 (procfs) file in 1 MiB chunks."""
    p = tmp_path / "f"
    p.write_bytes(b"y" * 5000)
    into: list[int] = []
    asked: list[int] = []
    real_readv, real_read = os.readv, os.read

    def readv(fd: int, buffers: list[memoryview]) -> int:
        into.append(sum(len(b) for b in buffers))
        return real_readv(fd, buffers)

    def read(fd: int, n: int) -> bytes:
        asked.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(files.os, "readv", readv)
    monkeypatch.setattr(files.os, "read", read)
    assert files.read_file(p, limit=1 << 20) == b"y" * 5000
    assert (into, asked) == ([5001, 1], [])  # the file, then its end
    into.clear()
    assert b"Name:" in files.read_file("/proc/self/status", limit=1 << 30)
    assert into == []
    assert asked[0] == 1 << 20
    # sysfs answers a page per read: all of them go into the one buffer
    into.clear()
    asked.clear()
    vmlinux = Path("/sys/kernel/btf/vmlinux")
    if vmlinux.exists():
        data = files.read_file(vmlinux, limit=1 << 30)
        assert len(data) == vmlinux.stat().st_size
        assert asked == []
        assert into[0] == len(data) + 1


@pytest.mark.parametrize("limit", [1 << 20, 1000])
def test_a_file_that_grew_after_its_fstat_is_read_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """The size fstat gave only sizes the first read: a file that grew since is read to its
    end, and the limit still holds."""
    p = tmp_path / "f"
    p.write_bytes(b"z" * 5000)
    real = files._open

    def smaller(path: str, follow: bool) -> tuple[int, os.stat_result]:
        fd, st = real(path, follow)
        fields = list(st)
        fields[stat.ST_SIZE] = 100  # what fstat said before the file grew
        return fd, os.stat_result(fields)

    monkeypatch.setattr(files, "_open", smaller)
    if limit > 5000:
        assert files.read_file(p, limit=limit) == b"z" * 5000
    else:
        with pytest.raises(FileError, match=r"grew past the 1000 bytes limit"):
            files.read_file(p, limit=limit)


def test_a_stream_that_would_block_is_refused() -> None:
    """trace_pipe is a regular file in tracefs that blocks until there is trace output."""
    pipe = Path("/sys/kernel/tracing/trace_pipe")
    if not pipe.exists():
        pytest.skip("tracefs is not mounted")
    with pytest.raises(FileError, match="would block") as info:
        promptly(lambda: files.read_file(pipe, limit=1 << 20))
    assert info.value.errno == errno.EAGAIN
    with files.open_file(pipe) as f, pytest.raises(FileError, match="would block"):
        promptly(lambda: f.read(10))


def test_missing_files_and_nul_bytes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.read_file(tmp_path / "nope", limit=10)
    with pytest.raises(FileError, match="NUL byte"):
        files.read_file(str(tmp_path / "a\0b"), limit=10)
    with pytest.raises(FileError, match="NUL byte"):
        files.stat_regular("a\0b")


def test_reason_keeps_the_units_of_a_file_error() -> None:
    assert files.reason(FileNotFoundError(errno.ENOENT, "No such file or directory")) == (
        "no such file or directory"
    )
    err = files.too_large("/x", 3 << 30, 1 << 20, "a manifest")
    assert files.reason(err) == "3.0 GiB, over the 1 MiB limit for a manifest"
    assert files.describe_size(1) == "1 byte" and files.describe_size(1536) == "1.5 KiB"


def test_open_file_reads_at_random_offsets(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 100)
    with files.open_file(p) as f:
        f.seek(1000)
        assert f.read(4) == bytes([1000 % 256 + i for i in range(4)])
        f.seek(0)
        assert len(f.read()) == 25600


def test_objects_go_through_it(tmp_path: Path, fifo: Path) -> None:
    """The loader's parse and its cache refuse what files refuses (promptly)."""
    from orchestrator.ebpf import CollectionSpec

    for cache in (True, False):
        with pytest.raises(ParseError, match=r"/dev/zero: not a regular file \(a character"):
            promptly(lambda c=cache: CollectionSpec.from_file("/dev/zero", cache=c))  # type: ignore[misc]
        with pytest.raises(ParseError, match=r"pipe: not a regular file \(a fifo\)"):
            promptly(lambda c=cache: CollectionSpec.from_file(fifo, cache=c))  # type: ignore[misc]
    big = tmp_path / "big.o"
    with open(big, "wb") as f:
        f.truncate(files.OBJECT_MAX + 1)
    with pytest.raises(ParseError, match=r"big\.o: 64\.0 MiB, over the 64 MiB limit for an object"):
        CollectionSpec.from_file(big)
    with pytest.raises(ParseError, match="NUL byte"):
        CollectionSpec.from_file(str(tmp_path / "x\0.o"))


# ---------------------------------------------------------------------------- LRU


def test_lru_is_bounded_by_bytes_and_entries() -> None:
    lru: LRU[str, int] = LRU(max_bytes=100, max_entries=3)
    assert lru.put("a", 1, 40) and lru.put("b", 2, 40)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3, 40)  # 120 > 100: b (least recent) goes
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3
    u = lru.usage()
    assert (u.entries, u.bytes, u.evictions) == (2, 80, 1)
    assert u.hits == 3  # the gets that found their key (not the miss of b)
    lru.put("a", 10, 10)  # replacing an entry re-costs it
    assert lru.usage().bytes == 50 and lru.get("a") == 10
    lru.put("d", 4, 1)
    lru.put("e", 5, 1)  # 4 entries > 3: the least recent (c) goes
    assert lru.get("c") is None and lru.usage().entries == 3
    assert not lru.put("huge", 0, 101)  # over the whole budget: not kept
    assert lru.get("huge") is None
    assert not lru.put("a", 11, 1000)  # and the old value of its key is gone too
    assert lru.get("a") is None
    assert lru.pop("d") == 4 and lru.pop("d") is None
    lru.clear()
    assert lru.usage().entries == 0 and lru.usage().bytes == 0 and lru.usage().hits == 0
    with pytest.raises(ValueError):
        LRU(-1)


def test_spec_cache_stays_within_its_byte_budget(tmp_path: Path) -> None:
    data = obj("xdp_counter.o").read_bytes()
    one = speccache.footprint(speccache.SpecCache().shared(obj("xdp_counter.o"))[0], len(data))
    cache = speccache.SpecCache(max_entries=100, max_bytes=3 * one + one // 2)
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.o"
        p.write_bytes(data)
        paths.append(p)
        cache.get(p)
        assert cache.usage().bytes <= cache.max_bytes
    assert cache.usage().entries == 3 and cache.usage().evictions == 7
    cache.get(paths[-1])  # still there (just written, so verified by content)
    assert cache.stats().parsed == 10


def test_spec_footprint_is_not_less_than_what_parsing_allocates() -> None:
    """The cache's accounting errs high: tracemalloc's count of what a parsed spec holds is
    never more than footprint() says, for every object in the repository. Measured with
    what the spec decodes on first need filled in (its BTF string table split whole and
    marshalled with the line-info strings, as a load or the persisted cache's encode does
    once the spec is cached), and not absurdly more."""
    import tracemalloc

    from orchestrator.ebpf import specfile
    from orchestrator.ebpf.elf import load_bytes
    from tests.conftest import BPF_DIR

    objects = sorted(BPF_DIR.glob("*.o"))
    assert len(objects) >= 10
    load_bytes(objects[0].read_bytes())  # one-time caches (ELF structs) are not the spec's
    for path in objects:
        data = path.read_bytes()
        tracemalloc.start()
        try:
            spec = load_bytes(data)
            specfile.encode(spec)  # what a cached spec holds once loaded or persisted
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        estimate = speccache.footprint(spec, len(data))
        assert held <= estimate <= 8 * held + 128 * 1024, (path.name, held, estimate)


# ---------------------------------------------------------------------------- quoting


def test_quote_cuts_long_values_and_says_how_long() -> None:
    assert quote("abc") == "'abc'"
    assert quote("a" * 50_000_000) == "'" + "a" * 80 + "…' (50000000 characters)"
    assert quote(b"\0" * 1000).endswith("…' (1000 bytes)")
    assert quote("it's") == '"it\'s"'
    assert quote("a\0b") == "'a\\x00b'"  # a NUL is shown, not written
    assert quote(12345) == "12345" and quote(-1) == "-1"
    assert quote(True) == "True" and quote(None) == "None"
    assert quote(10**5000) == "an integer of 16610 bits"  # str() would raise
    assert len(quote(list(range(100_000)))) < 200
    assert len(quote({"k": "v" * 10_000})) < 200
    assert clip("short") == "short"
    assert clip("p" * 100) == "p" * 80 + "… (100 characters)"


def test_a_fifo_as_network_namespace_is_refused_before_it_is_opened(fifo: Path) -> None:
    from orchestrator.ebpf import _netlink as netlink
    from orchestrator.ebpf import link as links

    def enter() -> None:
        with netlink.in_netns(fifo):
            pytest.fail("entered a FIFO as a namespace")

    with pytest.raises(FileError, match=r"not a regular file \(a fifo\)"):
        promptly(enter)

    def enter_for_links() -> None:
        with links.in_netns(fifo):
            pytest.fail("entered a FIFO as a namespace")

    with pytest.raises(AttachError, match=r"network namespace .*: not a regular file"):
        promptly(enter_for_links)


def test_a_parse_error_about_a_huge_name_is_cut(
    compile_bpf: Callable[..., Path], tmp_path: Path
) -> None:
    """An object's names can be megabytes long; a parse error that names one stays short."""
    import struct

    from orchestrator.ebpf.elf import load_bytes

    name = "s" * 200_000
    obj = compile_bpf(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        f'SEC("xdp/{name}") int f(void *c) {{ return 2; }}\n'
        'char L[] SEC("license") = "GPL";\n'
    )
    data = bytearray(obj.read_bytes())
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    (strtab_off,) = struct.unpack_from("<Q", data, shoff + shstrndx * 64 + 24)
    for i in range(shnum):
        at = shoff + i * 64
        (sh_name,) = struct.unpack_from("<I", data, at)
        if data[strtab_off + sh_name : strtab_off + sh_name + 4] == b"xdp/":
            struct.pack_into("<Q", data, at + 24, len(data) + 4096)  # sh_offset past the end
            break
    else:
        pytest.fail("no xdp/ section")
    with pytest.raises(ParseError) as info:
        load_bytes(bytes(data), path="huge.o")
    text = str(info.value)
    assert text.startswith("huge.o: section xdp/sss") and "extends past the end" not in text
    assert len(text) < 1200 and text.endswith(" characters)")
