"""Manifests and objects that are not what they claim: FIFOs, devices, files over their
size limit, integers too wide to print, NUL bytes in paths, values of megabytes. Each is a
problem naming the file and field, found promptly (nothing blocks), and no message echoes
a huge value in full. And the parsed-file cache stays within its byte budget."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.ebpf import files
from orchestrator.manifest import ManifestError, ManifestProblem, ObjectStore, load_manifests
from orchestrator.manifest import cache as _cache
from orchestrator.manifest import loader as _loader
from tests.conftest import ROOT
from tests.deadline import promptly

from .conftest import Write


def doc(name: str, obj: str = "../objs/net.o", extra: str = "") -> str:
    return (
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {{name: {name}}}\n"
        f"spec:\n  object: {obj}\n{extra}"
    )


def problems(paths: list[Path]) -> list[ManifestProblem]:
    with pytest.raises(ManifestError) as info:
        promptly(lambda: load_manifests(paths))
    return list(info.value.problems)


def test_a_fifo_given_as_a_manifest_is_a_problem(tree: Path) -> None:
    fifo = tree / "m.yaml"
    os.mkfifo(fifo)
    [p] = problems([fifo])
    assert p.source.file == fifo and p.field == ""
    assert p.message == "not a regular file (a fifo)" and p.hint == "only regular files are read"


def test_a_fifo_in_a_manifest_directory_is_a_problem_and_others_are_read(
    write: Write, tree: Path
) -> None:
    write("m/a.yaml", doc("a", "../objs/owner.o"))
    os.mkfifo(tree / "m" / "b.yaml")
    os.mkfifo(tree / "m" / "notes.txt")  # not a manifest name: ignored, as before
    write(
        "m/c.yaml", "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: c}\nspec: {}\n"
    )
    found = problems([tree / "m"])
    assert [(p.source.file.name, p.message) for p in found] == [
        ("b.yaml", "not a regular file (a fifo)"),
        ("c.yaml", "missing required field"),  # the other files are still checked
    ]
    os.unlink(tree / "m" / "b.yaml")
    (tree / "m" / "dangling.yaml").symlink_to(tree / "nowhere.yaml")  # skipped, as before
    write("m/c.yaml", doc("c", "../objs/owner.o"))
    assert sorted(load_manifests([tree / "m"]).collections) == ["a", "c"]


def test_fifo_and_device_objects_are_problems_at_spec_object(write: Write, tree: Path) -> None:
    os.mkfifo(tree / "objs" / "fifo.o")
    write("m/a.yaml", doc("a", "../objs/fifo.o"))
    write("m/b.yaml", doc("b", "/dev/zero"))
    found = problems([tree / "m"])
    assert [(p.source.file.name, p.source.line, p.field) for p in found] == [
        ("a.yaml", 5, "spec.object"),
        ("b.yaml", 5, "spec.object"),
    ]
    assert found[0].message == (
        f"cannot read object: {tree / 'objs/fifo.o'}: not a regular file (a fifo)"
    )
    assert (
        found[1].message == "cannot read object: /dev/zero: not a regular file (a character device)"
    )
    assert found[0].hint == "give the path of an eBPF object file"


def test_files_over_their_limit(write: Write, tree: Path) -> None:
    big = tree / "objs" / "big.o"
    with open(big, "wb") as f:
        f.truncate(files.OBJECT_MAX + (1 << 20))  # sparse
    write("m/a.yaml", doc("a", "../objs/big.o"))
    [p] = problems([tree / "m" / "a.yaml"])
    assert p.field == "spec.object"
    assert p.message == (
        f"cannot read object: {big}: 65.0 MiB, over the 64 MiB limit for an object"
    )
    huge = write("m/b.yaml", doc("b") + "# " + "x" * _loader.MANIFEST_MAX + "\n")
    [p] = problems([huge])
    assert p.source.file == huge
    assert p.message == "4.0 MiB, over the 4 MiB limit for a manifest"


def test_integers_too_wide_are_problems_at_their_field(write: Write, tree: Path) -> None:
    digits = "9" * 5000  # int() refuses over 4,300 digits
    write("m/a.yaml", doc("a", extra=f"  constants: {{version: {digits}}}\n"))
    hexa = "0x" + "f" * 40  # 160 bits: parses, but is wider than any eBPF type
    write("m/b.yaml", doc("b", extra=f"  maps:\n    counters: {{max_entries: {hexa}}}\n"))
    found = problems([tree / "m"])
    assert [(p.source.file.name, p.field, p.message) for p in found] == [
        ("a.yaml", "spec.constants.version", "integer of 5000 digits is too large"),
        ("b.yaml", "spec.maps.counters.max_entries", "integer of 160 bits is too large"),
    ]
    assert found[0].hint == "integers are at most 128 bits wide"
    # 128 bits is fine as far as parsing goes (the object's type decides the rest)
    write("m/b.yaml", doc("b", extra=f"  constants: {{version: {2**128 - 1}}}\n"))
    write("m/a.yaml", doc("a"))
    [p] = problems([tree / "m"])
    assert p.field == "spec.constants.version" and "does not fit" in p.message


def test_nul_bytes_and_overlong_paths(write: Write, tree: Path) -> None:
    write("m/a.yaml", doc("a", '"../objs/net\\0.o"'))
    write(
        "m/b.yaml",
        doc(
            "b",
            "../objs/user.o",
            '  maps:\n    shared_stats: {from: {pinned: "/sys/fs/bpf/x\\0y"}}\n',
        ),
    )
    write(
        "m/c.yaml",
        doc(
            "c",
            extra="  attach:\n    - program: probe\n"
            f"      uprobe: {{path: /{'p' * 5000}, symbol: main}}\n",
        ),
    )
    found = problems([tree / "m"])
    assert [(p.source.file.name, p.field) for p in found] == [
        ("a.yaml", "spec.object"),
        ("b.yaml", "spec.maps.shared_stats.from.pinned"),
        ("c.yaml", "spec.attach[0].uprobe.path"),
    ]
    assert found[0].message == "path '../objs/net\\x00.o' contains a NUL byte"
    assert found[1].message == "path '/sys/fs/bpf/x\\x00y' contains a NUL byte"
    assert found[2].message.startswith("path '/ppp") and found[2].message.endswith(
        "…' (5001 characters) is longer than 4095 bytes"
    )


def test_huge_values_are_cut_in_messages(write: Write, tree: Path) -> None:
    big = "v" * 1_500_000
    write(
        "m/a.yaml",
        doc("a", extra="").replace(
            "metadata: {name: a}", f"metadata: {{name: a, labels: {{team: {big}}}}}"
        ),
    )
    write("m/b.yaml", doc("b", extra=f"  constants: {{small: {big}, greeting: {big}}}\n"))
    # an explicit key (?): an implicit one is at most 1024 characters in YAML
    write("m/c.yaml", doc("c", extra=f"  maps:\n    counters:\n      ? {big}\n      : 1\n"))
    write("m/d.yaml", doc("d", extra=f"  programs: [{big}]\n"))
    write("m/e.yaml", doc("e", extra=f"  programs: [{'w' * 1000}]\n"))
    write(
        "m/f.yaml",
        doc(
            "f",
            extra="  attach:\n"
            f"    - {{program: tp, tracepoint: {{group: g, name: {'n' * 256}}}}}\n"
            f"    - {{program: probe, uprobe: {{path: /bin/true, symbol: {'s' * 4097}}}}}\n",
        ),
    )
    found = problems([tree / "m"])
    text = "\n".join(str(p) for p in found)
    assert len(text) < 3000, text[:3000]
    by_field = {(p.source.file.name, p.field): p.message for p in found}
    cut = "'" + "v" * 80 + "…' (1500000 characters)"
    assert by_field[("a.yaml", "metadata.labels.team")] == f"{cut} is longer than 63 characters"
    assert by_field[("b.yaml", "spec.constants.small")] == (
        f"expected one character for __u8, got {cut}"
    )
    assert by_field[("b.yaml", "spec.constants.greeting")] == "1500000 bytes do not fit char[8]"
    key = "v" * 80 + "… (1500000 characters)"
    assert by_field[("c.yaml", f'spec.maps.counters["{key}"]')] == f"unknown field {cut}"
    assert by_field[("d.yaml", "spec.programs[0]")] == f"{cut} is longer than 1024 characters"
    assert by_field[("f.yaml", "spec.attach[0].tracepoint.name")] == (
        "'" + "n" * 80 + "…' (256 characters) is longer than 255 characters"
    )
    assert by_field[("f.yaml", "spec.attach[1].uprobe.symbol")].endswith(
        "…' (4097 characters) is longer than 4096 characters"
    )
    assert by_field[("e.yaml", "spec.programs[0]")] == (
        "object has no program '" + "w" * 80 + "…' (1000 characters)"
    )


def test_the_file_cache_keeps_one_version_per_file_within_its_budget() -> None:
    """250 rewrites of a 2 MB manifest: the cache holds one entry, within its byte
    budget, and the process's RSS stops growing (it grew by 180 MB when the cache was keyed
    by the file's text and kept 4,096 versions). Run in a fresh process for a clean RSS."""
    script = textwrap.dedent(
        f"""
        import sys, tempfile
        from pathlib import Path
        from orchestrator.manifest import ManifestError, ObjectStore, load_manifests

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        m = Path(tempfile.mkdtemp()) / "m.yaml"
        store = ObjectStore()
        after = {{}}
        for i in range(250):
            m.write_text(
                "apiVersion: bpforch.dev/v1\\nkind: Collection\\nmetadata: {{name: x}}\\n"
                "spec:\\n  object: {ROOT}/bpf/globals.o\\n"
                f"  constants: {{{{c_name: '{{i:08d}}" + "x" * 2_000_000 + "'}}}}\\n"
            )
            try:
                load_manifests([m], store=store)
            except ManifestError as err:
                assert len(str(err)) < 1000, len(str(err))
            u = store.manifests.usage()
            assert u.entries == 1 and u.bytes <= u.max_bytes, u
            if i + 1 in (25, 250):
                after[i + 1] = rss()
        print(after[25], after[250], store.manifests.usage().bytes)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    rss_25, rss_250, held = (int(x) for x in out.stdout.split())
    assert 2_000_000 < held <= _cache.MANIFESTS_MAX_BYTES
    assert rss_250 - rss_25 < 20 << 20, (rss_25 >> 20, rss_250 >> 20)


def test_the_cache_is_bounded_by_bytes_across_files(write: Write, tree: Path) -> None:
    """Many files: the least recently used go once their estimated bytes pass the budget."""
    paths = [write(f"m/{i}.yaml", doc(f"c{i}", "../objs/owner.o")) for i in range(20)]
    one = _loader._cost(paths[0].stat().st_size, _loader._load_file(paths[0], [], ObjectStore()))
    store = ObjectStore(manifests_max_bytes=5 * one)
    cache = store.manifests
    for p in paths:
        _loader._load_file(p, [], store)
        assert cache.usage().bytes <= cache.max_bytes
    assert 4 <= cache.usage().entries <= 5
    state = load_manifests([tree / "m"], store=store)
    assert state.collections.keys() == {f"c{i}" for i in range(20)}


def test_trace_pipe_as_object_or_manifest(write: Write, tree: Path) -> None:
    """trace_pipe is a regular file in tracefs whose read waits for trace output."""
    pipe = Path("/sys/kernel/tracing/trace_pipe")
    if not pipe.exists():
        pytest.skip("tracefs is not mounted")
    write("m/a.yaml", doc("a", str(pipe)))
    [p] = problems([tree / "m"])
    assert p.field == "spec.object"
    assert p.message == f"cannot read object: {pipe}: reading it would block (a stream, not a file)"
    link = tree / "trace.yaml"
    link.symlink_to(pipe)
    [p] = problems([link])
    assert p.message == "reading it would block (a stream, not a file)"


def test_check_results_per_object_version_are_bounded(write: Write, tree: Path) -> None:
    """An unchanged manifest whose object is rebuilt again and again (make in a watch loop)
    keeps the check results of a few object versions, not of every one."""
    from orchestrator.ebpf import CollectionSpec
    from tests.conftest import BPF_DIR

    m = write("m/a.yaml", doc("a", "../objs/x.o"))
    # every object that validates as it is (bpf/unresolved.o has a program that cannot load)
    versions = [
        p
        for p in sorted(BPF_DIR.glob("*.o"))
        if not any(prog.unresolved for prog in CollectionSpec.from_file(p).programs.values())
    ]
    assert len(versions) > _loader._CHECKED_MAX
    store = ObjectStore()
    for i, obj in enumerate(versions):
        target = tree / "objs" / "x.o"
        (tree / "objs" / "new.o").write_bytes(obj.read_bytes())
        os.replace(tree / "objs" / "new.o", target)
        load_manifests([m], store=store)
        cached = store.manifests.get(str(m))
        assert cached is not None
        [(_, _, checked)] = cached[1].built
        assert 1 <= len(checked) <= _loader._CHECKED_MAX, i
