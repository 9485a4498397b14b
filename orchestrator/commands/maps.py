"""``bpforch map ls|dump|get|set|delete``: the contents of the maps bpforch owns, typed
through BTF both ways, keys and values written as in manifests (YAML literals)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from orchestrator.commands.output import EXIT_OK, emit_json, error, output_option, table

if TYPE_CHECKING:
    from orchestrator.reconcile.live_maps import LiveMap

FORMATS = ("be16", "be32", "be64", "ipv4", "ipv6", "hex")
# maps whose elements are not counted: no keys, or fds that only their writer can see
_UNCOUNTED = frozenset(
    {"ringbuf", "user_ringbuf", "queue", "stack", "bloom_filter", "perf_event_array"}
)


def _root_options(p: argparse.ArgumentParser) -> None:
    from orchestrator.service.cli import add_root_options

    add_root_options(p)


def _format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-format",
        choices=FORMATS,
        help="read and write the whole key this way (be16: a port in network byte order "
        "in a field whose BTF type does not say so; ipv4/ipv6: an address; hex: raw bytes)",
    )
    p.add_argument("--value-format", choices=FORMATS, help="the same, for the value")


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "map",
        help="read and write the maps bpforch owns (typed through BTF)",
        description="Keys and values are YAML literals, typed by the map's BTF as in "
        "manifests: integers, true/false, strings for char arrays, {member: value} for "
        "structs, [..] for arrays, enumerator names, addresses ('10.0.0.1') in 4- and "
        "16-byte fields, CIDRs for LPM trie keys, !be16 9999 for a number in network byte "
        "order, !hex 0a0b for raw bytes. A map is COLLECTION/MAP or the path of a pin.",
    )
    sub = p.add_subparsers(dest="map_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", help="every map bpforch owns: type, entries, capacity, pin")
    output_option(ls)
    _root_options(ls)
    ls.set_defaults(func=cmd_ls)

    dump = sub.add_parser("dump", help="every entry of a map")
    dump.add_argument("address", metavar="COLLECTION/MAP|PIN")
    _format_options(dump)
    output_option(dump)
    _root_options(dump)
    dump.set_defaults(func=cmd_dump)

    get = sub.add_parser("get", help="the value at a key")
    get.add_argument("address", metavar="COLLECTION/MAP|PIN")
    get.add_argument("key", metavar="KEY", help="a YAML literal (quote it for the shell)")
    _format_options(get)
    output_option(get)
    _root_options(get)
    get.set_defaults(func=cmd_get)

    set_ = sub.add_parser("set", help="write the value at a key")
    set_.add_argument("address", metavar="COLLECTION/MAP|PIN")
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("value", metavar="VALUE", help="per-CPU maps: one value, or a list")
    mode = set_.add_mutually_exclusive_group()
    mode.add_argument("--create", action="store_true", help="only if the key is absent")
    mode.add_argument("--update", action="store_true", help="only if the key is present")
    _format_options(set_)
    output_option(set_)
    _root_options(set_)
    set_.set_defaults(func=cmd_set)

    delete = sub.add_parser("delete", help="remove the entry at a key")
    delete.add_argument("address", metavar="COLLECTION/MAP|PIN")
    delete.add_argument("key", metavar="KEY")
    _format_options(delete)
    output_option(delete)
    _root_options(delete)
    delete.set_defaults(func=cmd_delete)


# ---------------------------------------------------------------------------- helpers


def _open(args: argparse.Namespace, err: TextIO) -> LiveMap | str:
    """The map the arguments name, or the error message."""
    from orchestrator.ebpf import Error as EbpfError
    from orchestrator.reconcile import ReconcileError
    from orchestrator.reconcile.live_maps import open_live_map

    try:
        return open_live_map(
            args.address,
            root=args.bpffs_root,
            state_dir=args.state_dir,
            key_format=getattr(args, "key_format", None),
            value_format=getattr(args, "value_format", None),
        )
    except ReconcileError as exc:
        return str(exc)
    except (EbpfError, OSError) as exc:
        return f"map {args.address}: {exc}"


def _literal(text: str, what: str) -> object:
    """A literal from the command line; ValueError with ``what`` in front."""
    from orchestrator.manifest.literals import LiteralSyntaxError, parse_literal

    try:
        return parse_literal(text)
    except LiteralSyntaxError as exc:
        raise ValueError(f"{what} {text!r}: {exc}") from None


def _entry(live: LiveMap, key: object, value: object, json_out: bool) -> dict[str, object]:
    from orchestrator.ebpf.values import plain, total

    out: dict[str, object] = {"key": plain(key) if json_out else key}
    out["value"] = plain(value) if json_out else value
    if live.codec.per_cpu and isinstance(value, list):
        s = total(value)
        out["sum"] = plain(s) if json_out else s
    return out


def _line(entry: dict[str, object]) -> str:
    from orchestrator.manifest.literals import render

    text = f"- {{key: {render(entry['key'])}, value: {render(entry['value'])}}}"
    if "sum" in entry:
        text += f"  # sum {render(entry['sum'])}" if entry["sum"] is not None else "  # no sum"
    return text


def _errors() -> tuple[type[BaseException], ...]:
    from orchestrator.ebpf import Error as EbpfError
    from orchestrator.reconcile import ReconcileError

    return (EbpfError, ReconcileError, ValueError, OSError)


# ---------------------------------------------------------------------------- verbs


def cmd_ls(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.reconcile import ReconcileError, Reconciler

    try:
        status = Reconciler(bpffs_root=args.bpffs_root, state_dir=args.state_dir).status()
    except ReconcileError as exc:
        return error(err, str(exc))
    rows: list[dict[str, object]] = []
    for c in status.collections:
        for m in c.maps:
            keyless = m.type in _UNCOUNTED
            entries = None if keyless else m.entries
            rows.append(
                {
                    "map": f"{c.name}/{m.name}",
                    "collection": c.name,
                    "name": m.name,
                    "type": m.type,
                    "id": m.id,
                    "entries": entries,
                    "max_entries": m.max_entries,
                    "pin": m.pin,
                    "source": m.source,
                }
            )
    if args.output == "json":
        emit_json({"maps": rows}, out)
        return EXIT_OK
    if not rows:
        print("No maps: nothing is applied.", file=out)
        return EXIT_OK
    lines = [["MAP", "TYPE", "ENTRIES", "MAX ENTRIES", "ID", "PIN"]]
    for r in rows:
        count = r["entries"]
        where = str(r["pin"])
        if not where:
            where = f"from {r['source']}" if r["source"] else "(held by its programs)"
        lines.append(
            [
                str(r["map"]),
                str(r["type"]),
                "-" if count is None else str(count),
                str(r["max_entries"]),
                str(r["id"]),
                where,
            ]
        )
    table(lines, out)
    return EXIT_OK


def cmd_dump(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    live = _open(args, err)
    if isinstance(live, str):
        return error(err, live)
    json_out = args.output == "json"
    with live:
        kind = _kind(live)
        if kind in ("ringbuf", "perf_event_array"):
            return error(
                err,
                f"map {live.address}: a {kind} map holds a stream, not entries (read it with "
                "bpforch events)",
            )
        entries: Iterator[tuple[object, object]] = live.literal.items()
        try:
            if json_out:
                rows = [_entry(live, k, v, True) for k, v in entries]
                emit_json({"map": str(live.address), "entries": rows, "count": len(rows)}, out)
                return EXIT_OK
            n = 0
            for k, v in entries:
                print(_line(_entry(live, k, v, False)), file=out)
                n += 1
        except _errors() as exc:
            return error(err, _prefixed(live, exc))
    print(f"# {n} entr{'y' if n == 1 else 'ies'}", file=out)
    return EXIT_OK


def _kind(live: LiveMap) -> str:
    t = live.map.type
    return t.name.lower() if hasattr(t, "name") else str(t)


def _prefixed(live: LiveMap, exc: BaseException) -> str:
    text = str(exc)
    prefix = f"map {live.map.name}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return f"map {live.address}: {text}"


def cmd_get(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.manifest.literals import render

    try:
        key = _literal(args.key, "key")
    except ValueError as exc:
        return error(err, str(exc))
    live = _open(args, err)
    if isinstance(live, str):
        return error(err, live)
    with live:
        try:
            value = live.literal.lookup(key)
        except _errors() as exc:
            return error(err, _prefixed(live, exc))
        entry = _entry(live, key, value, args.output == "json")
    if args.output == "json":
        emit_json({"map": str(live.address), **entry}, out)
        return EXIT_OK
    line = render(entry["value"])
    if "sum" in entry:
        line += f"  # sum {render(entry['sum'])}" if entry["sum"] is not None else ""
    print(line, file=out)
    return EXIT_OK


def cmd_set(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.ebpf import UpdateFlags
    from orchestrator.manifest.literals import render

    try:
        key = _literal(args.key, "key")
        value = _literal(args.value, "value")
    except ValueError as exc:
        return error(err, str(exc))
    flags = UpdateFlags.NOEXIST if args.create else UpdateFlags.EXIST if args.update else 0
    live = _open(args, err)
    if isinstance(live, str):
        return error(err, live)
    with live:
        try:
            live.literal.update(key, value, flags)
            stored = live.literal.lookup(key) if not live.codec.keyless else value
        except _errors() as exc:
            return error(err, _prefixed(live, exc))
        entry = _entry(live, key, stored, args.output == "json")
    if args.output == "json":
        emit_json({"map": str(live.address), **entry}, out)
    else:
        print(f"{live.address}: {render(entry['key'])} = {render(entry['value'])}", file=out)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.manifest.literals import render

    try:
        key = _literal(args.key, "key")
    except ValueError as exc:
        return error(err, str(exc))
    live = _open(args, err)
    if isinstance(live, str):
        return error(err, live)
    with live:
        try:
            live.literal.delete(key)
        except _errors() as exc:
            return error(err, _prefixed(live, exc))
    if args.output == "json":
        emit_json({"map": str(live.address), "deleted": _plain(key)}, out)
    else:
        print(f"{live.address}: deleted {render(key)}", file=out)
    return EXIT_OK


def _plain(value: object) -> object:
    from orchestrator.ebpf.values import plain

    return plain(value)
