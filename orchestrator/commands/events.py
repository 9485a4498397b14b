"""``bpforch events COLLECTION/MAP``: the records programs write to a ring buffer or a perf
event array, one per line, decoded through a BTF struct (``--type``) or as hex."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from orchestrator.commands.output import EXIT_OK, error, output_option

if TYPE_CHECKING:
    from orchestrator.ebpf import btf


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from orchestrator.service.cli import add_root_options

    p = subparsers.add_parser(
        "events",
        help="stream a ring buffer or perf event array (one record per line)",
        description="Print the records programs write to a ring buffer or a perf event "
        "array map as they arrive: one YAML line (or, with --output json, one JSON object) "
        "per record, decoded through the BTF struct --type names (looked up in the BTF the "
        "collection's programs were loaded with, or in --btf FILE), else as hex. Perf "
        "event arrays also report samples the kernel dropped. Reading a perf event array "
        "takes its entries over: one reader at a time.",
    )
    p.add_argument("address", metavar="COLLECTION/MAP|PIN")
    p.add_argument("--count", type=int, metavar="N", help="stop after N records")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--type", metavar="NAME", help="the BTF struct each record holds")
    p.add_argument(
        "--btf",
        type=Path,
        metavar="FILE",
        help="take --type from this eBPF object or raw BTF file (e.g. /sys/kernel/btf/vmlinux)",
    )
    p.add_argument("--pages", type=int, default=16, help="perf ring pages per CPU (default 16)")
    output_option(p)
    add_root_options(p)
    p.set_defaults(func=cmd_events)


def _btf_type(path: Path, name: str) -> btf.Type:
    from orchestrator.ebpf import CollectionSpec
    from orchestrator.ebpf import btf as _btf
    from orchestrator.ebpf.errors import Error as EbpfError
    from orchestrator.ebpf.files import read_file, reason

    try:
        data = read_file(path, limit=256 << 20, what="a BTF file")
    except OSError as exc:
        raise ValueError(f"--btf {path}: {reason(exc)}") from None
    try:
        if data[:4] == b"\x7fELF":
            spec = CollectionSpec.from_bytes(data, name=str(path)).btf
            if spec is None:
                raise ValueError(f"--btf {path}: the object has no BTF")
        else:
            spec = _btf.Spec.parse(data)
        return spec.type_by_name(name)
    except EbpfError as exc:
        raise ValueError(f"--btf {path}: {exc}") from None


def _read(reader: object, wait: float | None) -> list[tuple[int | None, bytes, int]]:
    """(cpu, data, lost) of the records there within ``wait`` seconds (cpu: perf only)."""
    from orchestrator.ebpf import PerfReader, RingBufReader

    if isinstance(reader, PerfReader):
        return [(r.cpu, r.data, r.lost) for r in reader.read(wait)]
    assert isinstance(reader, RingBufReader)
    return [(None, d, 0) for d in reader.read(wait)]


def cmd_events(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.ebpf import Error as EbpfError
    from orchestrator.ebpf import MapType, PerfReader, RingBufReader, btf
    from orchestrator.ebpf.values import decode, plain
    from orchestrator.manifest.literals import render
    from orchestrator.reconcile import ReconcileError
    from orchestrator.reconcile.live_maps import open_live_map

    if args.count is not None and args.count <= 0:
        return error(err, f"--count {args.count}: give a positive number")
    if args.timeout is not None and args.timeout < 0:
        return error(err, f"--timeout {args.timeout}: give a number of seconds (0 or more)")
    if args.btf is not None and args.type is None:
        return error(err, "--btf names where --type is looked up: give --type too")
    try:
        live = open_live_map(args.address, root=args.bpffs_root, state_dir=args.state_dir)
    except ReconcileError as exc:
        return error(err, str(exc))
    except (EbpfError, OSError) as exc:
        return error(err, f"map {args.address}: {exc}")
    with live:
        mtype = live.map.type
        if mtype not in (MapType.RINGBUF, MapType.PERF_EVENT_ARRAY):
            t = mtype.name.lower() if isinstance(mtype, MapType) else str(mtype)
            return error(
                err,
                f"map {live.address}: a {t} map has no event stream (events reads ring "
                "buffers and perf event arrays; see bpforch map dump)",
            )
        record_type: btf.Type | None = None
        if args.type is not None:
            try:
                record_type = (
                    _btf_type(args.btf, args.type)
                    if args.btf is not None
                    else live.find_type(args.type)
                )
                size = btf.sizeof(record_type)
            except (ValueError, ReconcileError, EbpfError) as exc:
                return error(err, f"--type {args.type}: {exc}")
        perf = mtype == MapType.PERF_EVENT_ARRAY
        try:
            reader: PerfReader | RingBufReader = (
                PerfReader(live.map, pages=args.pages) if perf else RingBufReader(live.map)
            )
        except (EbpfError, OSError) as exc:
            return error(err, f"map {live.address}: {exc}")
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        seen = 0
        with reader:
            while args.count is None or seen < args.count:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if wait is not None and wait <= 0:
                    break
                batch = _read(reader, wait)
                for cpu, data, lost in batch:
                    rec: dict[str, object] = {} if cpu is None else {"cpu": cpu}
                    if lost:
                        rec["lost"] = lost
                        print(
                            f"lost {lost} record{'s' if lost != 1 else ''} on CPU {cpu} "
                            "(the ring was full: read faster, or give --pages)",
                            file=err,
                        )
                        if args.output != "json":
                            continue
                    elif record_type is not None:
                        if len(data) < size:
                            # a variable-length record (a struct ending in an array the
                            # program fills in part): what it left out reads as zeros
                            rec["size"] = len(data)
                        try:
                            rec["event"] = decode(record_type, data[:size].ljust(size, b"\0"))
                        except EbpfError as exc:
                            rec["error"] = str(exc)
                            rec["hex"] = data.hex()
                    else:
                        rec["hex"] = data.hex()
                    if args.output == "json":
                        out.write(json.dumps(plain(rec)) + "\n")
                    else:
                        out.write(render(rec) + "\n")
                    out.flush()
                    if not lost:
                        seen += 1
                        if args.count is not None and seen >= args.count:
                            break
    return EXIT_OK
