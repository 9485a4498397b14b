"""Ownership of the bpffs root: what bpforch can prove it created, and the lock.

bpforch removes only what it can prove it created. The record proves the collections it
lists; everything else has to carry an **ownership marker**: a pinned one-entry array map,
frozen after it is written (bpffs accepts neither regular files nor xattrs, so a marker has
to be a kernel object). Its value is a header (magic, format version, kind, payload length,
the root's owner token) and a JSON payload:

- ``<root>/_owner`` (kind ``owner``): a random token and the identity of the state
  directory that owns the root (its real path, st_dev and st_ino). A root has exactly one
  state directory; a second one is refused with an error that names both.
- ``<root>/_staging-<txid>/_mark`` (kind ``staging``): the transaction id. Pinned right
  after the staging directory is made, so a leftover of a killed apply is provably ours.
- ``<root>/<collection>/_mark`` (kind ``collection``): the collection's name and its
  record, pinned into the staged tree before it is swapped into place. When the state
  record is lost, it is rebuilt from these markers: nothing is reloaded, preserved maps
  keep their ids and contents. One apply writes the markers of all the collections it
  stages into one hash map keyed by the collection's name (one map per power-of-two
  value size, so no entry takes more than twice its size), frozen, and pins that map as
  each collection's ``_mark``: a reader looks up its own collection's entry. A single
  collection marker (an array of one entry) is read as well.

A directory without a valid marker (a look-alike of a collection, a ``_staging-`` name
someone else made), a marker of another owner, a symlink or a mount point is **foreign**:
reported by plan and status, never followed, changed or removed.

The lock is an flock on the root directory itself (which works on bpffs), plus the state
directory's lock file, so two instances never interleave whichever state directory they use.
Nothing in the root is ever reached through a symlink: directories are opened with
O_NOFOLLOW relative to their parent's fd, pins are checked with fstatat before BPF_OBJ_GET.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path

from orchestrator.ebpf import Map, MapType
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.errors import KeyNotFoundError
from orchestrator.ebpf.inspect import (
    FD,
    ensure_dir,
    is_bpffs,
    open_dir_at,
    open_pin_at,
    pin_at,
)
from orchestrator.reconcile.errors import ApplyError, StateError
from orchestrator.reconcile.state import CollectionRecord, collection_text

OWNER_PIN = "_owner"
MARK_PIN = "_mark"
# bpffs refuses names with a dot; an underscore can't start a collection name (DNS label)
STAGING_PREFIX = "_staging-"
LOCK_FILE = "lock"

MAGIC = b"bpforch\x00"
FORMAT = 1
_HEADER = struct.Struct("<8sHHI16s")  # magic, format, kind, payload length, token
MAX_PAYLOAD = 1 << 20
TOKEN_SIZE = 16
# the key of a shared collection marker: the collection's name (a DNS label, at most 63
# bytes), NUL-padded
KEY_SIZE = 64


class MarkKind(enum.IntEnum):
    OWNER = 1
    STAGING = 2
    COLLECTION = 3


class MarkerError(Exception):
    """A pin that should be an ownership marker is not a valid one (the message says why)."""


@dataclass(frozen=True, slots=True)
class Marker:
    kind: MarkKind
    token: bytes
    payload: Mapping[str, object]


# ---------------------------------------------------------------------------- markers


def write_marker(dir_fd: int, name: str, marker: Marker) -> None:
    """Create the marker map, write its one value, freeze it, pin it as ``name`` in
    ``dir_fd`` (EEXIST if that name is taken: a marker is never replaced in place)."""
    data = json.dumps(marker.payload, separators=(",", ":"), sort_keys=True).encode()
    _pin_marker(dir_fd, name, marker.kind, marker.token, data)


def _pin_marker(dir_fd: int, name: str, kind: MarkKind, token: bytes, data: bytes) -> None:
    """:func:`write_marker` of a payload already encoded (``data``, JSON)."""
    value = _value(kind, token, data)
    from orchestrator.ebpf import MapSpec  # (only to write one: observe reads them)

    kname = "bpforch_owner" if kind is MarkKind.OWNER else "bpforch_mark"
    with Map.create(MapSpec(kname, MapType.ARRAY, 4, len(value), 1)) as m:
        m.update(0, value)
        m.freeze()
        pin_at(m.fd, dir_fd, name)


def _value(kind: MarkKind, token: bytes, data: bytes) -> bytes:
    """A marker's value: the header and the JSON payload ``data``, padded to 8 bytes."""
    if len(data) > MAX_PAYLOAD:
        raise MarkerError(f"marker payload of {len(data)} bytes is over {MAX_PAYLOAD}")
    value = _HEADER.pack(MAGIC, FORMAT, int(kind), len(data), token) + data
    return value + bytes(-len(value) % 8)


def _key(collection: str) -> bytes:
    """The key of ``collection`` in a shared collection marker."""
    try:
        raw = collection.encode()
    except UnicodeEncodeError:  # a directory name that is not UTF-8: no collection's
        raise MarkerError(f"name {collection!r} is not UTF-8: no collection's") from None
    if not 0 < len(raw) < KEY_SIZE:
        raise MarkerError(f"collection name {collection!r} does not fit a marker key")
    return raw.ljust(KEY_SIZE, b"\0")


def read_marker(dir_fd: int, name: str, *, collection: str | None = None) -> Marker | None:
    """The marker pinned as ``name`` in ``dir_fd``; None if nothing has that name. Raises
    MarkerError if the name holds anything else (a symlink, another map, a bad value).
    ``collection``: the marker is that collection's (a shared marker holds it under that
    name; a single one is read as it is)."""
    try:
        fd = open_pin_at(dir_fd, name)
    except FileNotFoundError:
        return None
    except (EbpfError, OSError) as err:
        if getattr(err, "errno", None) == errno.ENOENT:
            return None
        raise MarkerError(str(err)) from err
    return _decode(fd, collection)


def _decode(fd: FD, collection: str | None) -> Marker:
    try:
        m = Map.from_fd(fd)
    except EbpfError as err:
        raise MarkerError("not a map") from err
    with m:
        sized = _HEADER.size <= m.value_size <= _HEADER.size + MAX_PAYLOAD + 8
        shared = m.type == MapType.HASH and m.key_size == KEY_SIZE and collection is not None
        single = m.type == MapType.ARRAY and m.key_size == 4 and m.max_entries == 1
        if not sized or not (shared or single):
            raise MarkerError("not an ownership marker (a map of another shape)")
        try:
            if shared:
                assert collection is not None
                raw: object = m.lookup_bytes(_key(collection))
            else:
                raw = m.lookup(0)
        except KeyNotFoundError:
            raise MarkerError(f"a shared marker that holds none for {collection}") from None
        except EbpfError as err:
            raise MarkerError(f"unreadable: {err}") from err
    if not isinstance(raw, bytes):
        raise MarkerError("not an ownership marker (a map with BTF types)")
    magic, fmt, kind, size, token = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise MarkerError("not an ownership marker (no bpforch magic)")
    if fmt != FORMAT:
        raise MarkerError(f"marker format {fmt} is not {FORMAT} (made by another version)")
    if kind not in {k.value for k in MarkKind} or _HEADER.size + size > len(raw):
        raise MarkerError("malformed marker")
    try:
        payload = json.loads(raw[_HEADER.size : _HEADER.size + size])
    except (ValueError, RecursionError) as err:
        raise MarkerError(f"malformed marker payload ({type(err).__name__})") from err
    if not isinstance(payload, dict):
        raise MarkerError("malformed marker payload (not an object)")
    return Marker(MarkKind(kind), token, payload)


# ---------------------------------------------------------------------------- the root's owner


@dataclass(frozen=True, slots=True)
class StateDirIdentity:
    """Which state directory this is: its real path, and (if it exists) st_dev/st_ino. Two
    identities are the same directory if the paths are equal (a state directory on tmpfs
    that was removed and made again) or the inodes are (one directory reached by two
    paths)."""

    path: str
    dev: int = 0
    ino: int = 0

    @classmethod
    def of(cls, state_dir: Path) -> StateDirIdentity:
        path = os.path.realpath(state_dir)
        try:
            st = os.stat(path)
        except OSError:
            return cls(path)
        return cls(path, st.st_dev, st.st_ino)

    def same(self, other: StateDirIdentity) -> bool:
        if self.path == other.path:
            return True
        return self.ino != 0 and (self.dev, self.ino) == (other.dev, other.ino)

    def to_json(self) -> dict[str, object]:
        return {"state_dir": self.path, "dev": self.dev, "ino": self.ino}

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> StateDirIdentity:
        path, dev, ino = d.get("state_dir"), d.get("dev"), d.get("ino")
        if not isinstance(path, str) or not isinstance(dev, int) or not isinstance(ino, int):
            raise MarkerError("malformed owner marker (no state directory)")
        return cls(path, dev, ino)


def root_token(root_fd: int, root: Path, state_dir: Path) -> bytes:
    """The owner token of the root (empty if no state directory claimed it yet). Raises
    StateError if another state directory owns the root, or ``_owner`` is not a valid
    owner marker."""
    where = root / OWNER_PIN
    try:
        marker = read_marker(root_fd, OWNER_PIN)
    except MarkerError as err:
        raise StateError(
            f"bpffs root {root}: {where} is not bpforch's ownership marker ({err}); bpforch "
            "never removes what it did not create (use another --bpffs-root, or remove "
            f"{where} if nothing else uses {root})"
        ) from err
    if marker is None:
        return b""
    if marker.kind is not MarkKind.OWNER:
        raise StateError(
            f"bpffs root {root}: {where} is a marker of kind {marker.kind.name.lower()}, not "
            f"an owner marker (use another --bpffs-root, or remove {where})"
        )
    try:
        owner = StateDirIdentity.from_json(marker.payload)
    except MarkerError as err:
        raise StateError(f"bpffs root {root}: {where}: {err} (remove {where})") from err
    me = StateDirIdentity.of(state_dir)
    if not owner.same(me):
        gone = ""
        if not os.path.isdir(owner.path):
            gone = (
                f"; {owner.path} does not exist any more, and with --state-dir {owner.path} its "
                "record is rebuilt from the root's markers"
            )
        raise StateError(
            f"bpffs root {root} belongs to state dir {owner.path}, not {me.path}: one root has "
            f"one state dir{gone} (run with --state-dir {owner.path}, or use another "
            f"--bpffs-root; to hand the root over, run bpforch destroy --all --state-dir "
            f"{owner.path} first)"
        )
    return marker.token


def claim_root(root_fd: int, state_dir: Path) -> bytes:
    """Pin ``_owner`` for ``state_dir`` with a new token; returns the token."""
    import secrets  # only to claim a root: plan and status never do

    token = secrets.token_bytes(TOKEN_SIZE)
    payload = StateDirIdentity.of(state_dir).to_json()
    write_marker(root_fd, OWNER_PIN, Marker(MarkKind.OWNER, token, payload))
    return token


def release_root(root_fd: int, token: bytes) -> None:
    """Unpin ``_owner`` if it is still the marker with ``token`` (nothing under the root is
    ours any more)."""
    with contextlib.suppress(MarkerError):
        marker = read_marker(root_fd, OWNER_PIN)
        if marker is not None and marker.kind is MarkKind.OWNER and marker.token == token:
            os.unlink(OWNER_PIN, dir_fd=root_fd)


# ---------------------------------------------------------------------------- verdicts


def staging_verdict(root_fd: int, name: str, token: bytes) -> str | None:
    """None if ``<root>/name`` is a staging directory of ours (its marker has our token;
    or it is empty: killed between mkdir and the marker's pin, and removing an empty
    directory can't destroy anything); else why it is foreign."""
    try:
        fd = open_dir_at(root_fd, name)
    except OSError as err:
        return f"not a directory bpforch made ({err.strerror})"
    try:
        if not any(True for _ in os.scandir(fd)):
            return None
        try:
            marker = read_marker(fd, MARK_PIN)
        except MarkerError as err:
            return f"ownership marker {MARK_PIN}: {err}"
    finally:
        os.close(fd)
    if marker is None:
        return "no ownership marker: not made by bpforch"
    if marker.kind is not MarkKind.STAGING or not token or marker.token != token:
        return "ownership marker of another owner"
    return None


def collection_verdict(root_fd: int, name: str, token: bytes) -> CollectionRecord | str:
    """The record in the marker of the unrecorded directory ``<root>/name`` if it is a
    collection of ours; else why it is foreign."""
    try:
        fd = open_dir_at(root_fd, name)
    except OSError as err:
        return f"not a directory bpforch made ({err.strerror})"
    try:
        marker = read_marker(fd, MARK_PIN, collection=name)
    except MarkerError as err:
        return f"ownership marker {MARK_PIN}: {err}"
    finally:
        os.close(fd)
    if marker is None:
        return "no ownership marker: not made by bpforch (it only looks like a collection)"
    if marker.kind is not MarkKind.COLLECTION or not token or marker.token != token:
        return "ownership marker of another owner"
    data = marker.payload.get("record")
    if marker.payload.get("name") != name or not isinstance(data, dict):
        return "ownership marker of another collection"
    try:
        return CollectionRecord.from_json(name, data)
    except (ValueError, KeyError, AssertionError, TypeError, RecursionError, StateError) as err:
        return f"ownership marker {MARK_PIN}: unreadable record ({err})"


def mark_collection(
    dir_fd: int, token: bytes, record: CollectionRecord, txid: str, text: str | None = None
) -> None:
    """Pin the collection marker (with the collection's record) into its directory, a map
    of its own. Its payload is ``{"name", "record", "txid"}``; ``text``: the record already
    encoded by :func:`collection_text`."""
    if text is None:
        text = collection_text(record)
    _pin_marker(dir_fd, MARK_PIN, MarkKind.COLLECTION, token, _payload(record.name, text, txid))


def mark_collections(
    token: bytes,
    txid: str,
    marks: Sequence[tuple[int | str, str, str]],
    *,
    dir_fd: int | None = None,
    shown_dir: str | None = None,
) -> None:
    """Pin the collection markers of one transaction: ``marks`` holds, per collection, its
    directory (an fd, or the path of a directory the caller made: the transaction's staged
    trees; relative to ``dir_fd`` when given, a failure then naming it under ``shown_dir``,
    that directory's path), its name and its record's text (by
    :func:`collection_text`). The payloads (as :func:`mark_collection` writes them) go into
    one hash map keyed by the collection's name per power-of-two value size, written in one
    batch and frozen before it is pinned as each of its collections' ``_mark``."""
    classes: dict[int, list[tuple[int | str, bytes, bytes]]] = {}
    tx = encode_basestring_ascii(txid)
    for where, name, text in marks:
        value = _value(MarkKind.COLLECTION, token, _payload(name, text, txid, tx))
        size = 1 << (len(value) - 1).bit_length()
        classes.setdefault(size, []).append((where, _key(name), value))
    for members in classes.values():
        vsize = max(len(v) for _, _, v in members)
        from orchestrator.ebpf import MapSpec  # (only to write them: observe reads them)

        # preallocated, for exactly its entries: writing a BPF_F_NO_PREALLOC map allocates
        # each element and its first write fills a per-CPU element cache, 4x slower in all
        # (50 entries of 1 KiB: 190 µs, preallocated 44 µs); both hold about one spare
        # element per possible CPU (the kernel's spares, or its per-CPU caches)
        spec = MapSpec("bpforch_mark", MapType.HASH, KEY_SIZE, vsize, len(members))
        with Map.create(spec) as m:
            keys = b"".join(k for _, k, _ in members)
            values = b"".join(v.ljust(vsize, b"\0") for _, _, v in members)
            m.batch_update_bytes(keys, values, len(members))
            m.freeze()
            for where, _, _ in members:
                if isinstance(where, str):
                    m.pin(f"{where}/{MARK_PIN}", dir_fd=dir_fd, shown_dir=shown_dir)
                else:
                    pin_at(m.fd, where, MARK_PIN)


def _payload(name: str, text: str, txid: str, encoded_txid: str | None = None) -> bytes:
    # the payload encoded as json.dumps(sort_keys=True) would: its keys in sorted order (a
    # string as json.dumps writes it: encode_basestring_ascii); ``encoded_txid``: ``txid``
    # already encoded (the same for every collection of a transaction)
    tx = encode_basestring_ascii(txid) if encoded_txid is None else encoded_txid
    return f'{{"name":{encode_basestring_ascii(name)},"record":{text},"txid":{tx}}}'.encode()


def mark_staging(dir_fd: int, token: bytes, txid: str) -> None:
    write_marker(dir_fd, MARK_PIN, Marker(MarkKind.STAGING, token, {"txid": txid}))


# ---------------------------------------------------------------------------- fds


def open_root(root: Path) -> int:
    """An fd of the bpffs root, refusing a symlink (StateError)."""
    try:
        return open_dir_at(None, os.fspath(root))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateError(
                f"bpffs root {root} is a symlink (to {os.readlink(root)}); bpforch never "
                "follows symlinks in the tree it owns (give the real directory as "
                "--bpffs-root)"
            ) from err
        if err.errno == errno.ENOENT:
            raise
        raise StateError(f"bpffs root {root}: {err.strerror}") from err


def open_owned(root_fd: int, rel: str) -> FD:
    """BPF_OBJ_GET of ``<root>/rel`` (like ``coll/maps/x``), each directory opened with
    O_NOFOLLOW relative to its parent and the pin checked not to be a symlink."""
    *dirs, leaf = rel.split("/")
    fds: list[int] = []
    try:
        cur = root_fd
        for d in dirs:
            cur = open_dir_at(cur, d)
            fds.append(cur)
        return open_pin_at(cur, leaf)
    finally:
        for fd in fds:
            os.close(fd)


def _open_existing_root(root: Path) -> int | None:
    """An fd of ``root`` if it already is a directory on bpffs (never a symlink): opened,
    then the filesystem of what was opened checked (one open and one statfs, where making
    it would look up each ancestor). None for anything else: :func:`locked` then makes it
    or refuses it with the reason."""
    try:
        fd = open_dir_at(None, os.fspath(root))
    except OSError:
        return None
    if is_bpffs(f"/proc/self/fd/{fd}"):
        return fd
    os.close(fd)
    return None


def _make_root(root: Path) -> int | None:
    """An fd of ``root`` made in its parent, if that is a directory on bpffs (opened, then
    checked): one mkdir where :func:`ensure_dir` would look up each ancestor first. None if
    the parent is anything else (missing, a symlink, not on bpffs)."""
    try:
        parent = open_dir_at(None, os.fspath(root.parent))
    except OSError:
        return None
    try:
        if not is_bpffs(f"/proc/self/fd/{parent}"):
            return None
        with contextlib.suppress(FileExistsError):  # made meanwhile: opened as it is
            os.mkdir(root.name, 0o700, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    return _open_existing_root(root)


@contextlib.contextmanager
def locked(root: Path, state_dir: Path) -> Iterator[int]:
    """Hold the apply lock for the block and yield the root's fd: an flock on the bpffs
    root directory itself (made if missing; two instances on one root never interleave,
    whatever their state directories), then on ``state_dir/lock`` (one state directory never
    serves two applies at once). Blocks until both are free."""
    root_fd = _open_existing_root(root)
    if root_fd is None:
        root_fd = _make_root(root)
    if root_fd is None:  # its parents made too, or refused with the reason
        if root.is_symlink():  # dangling too: refused as a symlink, its target never made
            open_root(root)  # raises StateError
        try:
            ensure_dir(root)
        except EbpfError as err:
            raise ApplyError(f"bpffs root {root}: {err}") from err
        root_fd = open_root(root)
    try:
        fcntl.flock(root_fd, fcntl.LOCK_EX)
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StateError(f"lock {state_dir / LOCK_FILE}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield root_fd
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)  # releases the root's lock


__all__ = [
    "MARK_PIN",
    "OWNER_PIN",
    "STAGING_PREFIX",
    "MarkKind",
    "Marker",
    "MarkerError",
    "StateDirIdentity",
    "claim_root",
    "collection_verdict",
    "locked",
    "mark_collection",
    "mark_collections",
    "mark_staging",
    "open_owned",
    "open_root",
    "read_marker",
    "release_root",
    "root_token",
    "staging_verdict",
    "write_marker",
]
