"""Commit and release: the new record and the ownership markers, the staged trees swapped
into place and the deleted ones moved out, the record written; then the old generation's
links detached, the staging directory removed, old collections marked."""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import stat
from dataclasses import replace
from functools import partial
from pathlib import Path

from orchestrator import ebpf
from orchestrator.ebpf import link as _links
from orchestrator.ebpf.inspect import is_mount_root, open_dir_at, open_pin_at
from orchestrator.reconcile.actions import Commit, Delete, Detach, Mark, Seal
from orchestrator.reconcile.cache import FIXED_LINKS
from orchestrator.reconcile.errors import ApplyError
from orchestrator.reconcile.owner import mark_collection, mark_collections
from orchestrator.reconcile.plan import target_fields
from orchestrator.reconcile.state import (
    AttachmentRecord,
    CollectionRecord,
    MapRecord,
    MapShape,
    ProgramRecord,
    StateRecord,
    collection_text,
)
from orchestrator.reconcile.store import git_revision, rename
from orchestrator.reconcile.transaction.base import TransactionBase, check_name, pin_name
from orchestrator.reconcile.transaction.switch import detach, kernel_mode


def _ino(rel: str, dir_fd: int) -> int:
    """The inode of the pin ``rel`` (a path relative to ``dir_fd``; its last component is
    never followed)."""
    return os.stat(rel, dir_fd=dir_fd, follow_symlinks=False).st_ino


class CommitSteps(TransactionBase):
    """Seal, Commit, Delete; after the record: Release, Detach, RemoveStaging, Mark."""

    def _new_record(self, seal: Seal) -> StateRecord:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out = dict(seal.base.collections)
        revs: dict[str, str | None] = {}  # manifest directory -> its git revision
        sfd = self.staging_fd
        for name, st in self.staged.items():
            assert sfd is not None  # the staged trees are in the staging directory
            d = st.desired
            old = out.get(name)
            sdir = st.rel  # the pins' inodes: looked up relative to the staging directory
            maps: dict[str, MapRecord] = dict(st.carried)
            for mname, m in st.maps.items():
                mo = d.maps.get(mname)
                src = st.sources.get(mname, "")
                if not src and mname not in st.pinned and mname not in st.held:
                    continue  # nothing holds it: gone with the transaction's fds
                rel = f"maps/{pin_name(mname)}" if mname in st.pinned else ""
                shape = st.shapes.get(mname)
                if shape is None:
                    shape = MapShape(int(m.type), m.key_size, m.value_size, m.max_entries, m.flags)
                maps[mname] = MapRecord(
                    mname,
                    m.id,
                    shape,
                    rel,
                    preserve=bool(mo is not None and mo.preserve),
                    source=src,
                    ino=_ino(f"{sdir}/{rel}", sfd) if rel else 0,
                )
            programs: dict[str, ProgramRecord] = {}
            for pname, p in st.programs.items():
                rel = f"progs/{pin_name(pname)}"
                programs[pname] = ProgramRecord(
                    pname,
                    p.id,
                    p.tag,
                    rel,
                    int(p.type),
                    ino=_ino(f"{sdir}/{rel}", sfd),
                    verified_insns=p.verified_insns,
                )
            atts: dict[str, AttachmentRecord] = {}
            for a in d.attach:
                link, kind, pin = st.links[a.key()]
                atts[a.key()] = AttachmentRecord(
                    a.key(),
                    a.program,
                    kind,
                    link.id,
                    pin,
                    target=target_fields(a.target),
                    mode=kernel_mode(link, a.target),
                    # a link made by this apply, with the recorded program: its pin's
                    # inode stands for it while its kind can't be switched or detached
                    ino=_ino(f"{sdir}/{pin}", sfd) if kind in FIXED_LINKS else 0,
                )
            base = os.path.dirname(d.source.file)  # a string: Path hashing costs more
            if base not in revs:
                revs[base] = git_revision(Path(base or "."))
            out[name] = CollectionRecord(
                name=name,
                generation=(old.generation + 1) if old is not None else 1,
                digest=d.digest,
                object_file=os.fspath(d.object_file),
                object_sha256=st.object_sha256,
                manifest=str(d.source),
                applied_at=now,
                git_revision=revs[base],
                maps=maps,
                programs=programs,
                attachments=atts,
                depends_on=tuple(sorted(d.depends_on())),
                load_key=st.load_key,
                labels=dict(sorted(d.labels.items())),
            )
        for name in seal.deleted:
            out.pop(name, None)
        for name, digests in seal.entries.items():
            rec = out.get(name)
            written = dict(sorted(digests.items()))
            if rec is not None and written != rec.entries:  # else the record says it already
                out[name] = replace(rec, entries=written)
        return StateRecord(out)

    def _mark(self, record: StateRecord) -> None:
        """Pin each staged tree's ownership marker, holding its collection's new record (so
        a lost state record can be rebuilt from the pins): one shared marker map for the
        transaction's collections (see :func:`mark_collections`)."""
        marks: list[tuple[int | str, str, str]] = []
        for name, st in self.staged.items():
            # encoded once: the record file holds the same text (see WriteRecord)
            text = self.texts[name] = collection_text(record.collections[name])
            # pinned in the staged tree relative to the staging directory, as its programs
            # and maps were (the transaction made it, in its own staging directory)
            marks.append((st.rel, name, text))
        if not marks:
            return
        assert self.staging_fd is not None
        shown = os.fspath(self.staging)
        mark_collections(self.token, self.txid, marks, dir_fd=self.staging_fd, shown_dir=shown)

    def _live_dir(self, name: str) -> tuple[int, int] | None:
        """The (st_dev, st_ino) of the directory ``<root>/name``, None if there is none.
        Anything else there (a symlink or a mount put there since the plan) is refused: it
        is never moved or followed."""
        try:
            st = os.stat(name, dir_fd=self.root_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and not is_mount_root(self.root_fd, name):
                return st.st_dev, st.st_ino
        except FileNotFoundError:
            return None
        raise ApplyError(
            f"{self.root / name} is not a directory bpforch made (a symlink or mount put "
            "there since the plan); bpforch never moves or follows it"
        )

    def _proven_live(self, name: str, ident: tuple[int, int] | None) -> bool:
        """Whether the directory ``<root>/name`` is there, proven the one the plan saw
        (``ident``: its st_dev and st_ino then, None: there was none). One made or put in
        its place since fails the apply: what is moved out of the root is removed with the
        old generation."""
        live = self._live_dir(name)
        if live is None:
            return False
        if live != ident:
            what = "made" if ident is None else "replaced"
            raise ApplyError(
                f"{self.root / name} was {what} since the plan; bpforch never replaces what "
                "the plan did not prove its own (apply again: the next plan sees it)"
            )
        return True

    def _commit(self, action: Commit) -> None:
        """Swap the staged tree with the live one atomically, or move it into place (a new
        collection: the move refuses to replace anything, so nothing is looked at first).
        What is swapped out is removed with the old generation, so only the directory the
        plan proved ours is (its identity, st_dev and st_ino, as observe saw it): whatever
        took the collection's place since the plan is never replaced."""
        name = action.collection
        rfd, sfd = self.root_fd, self.staging_fd
        self.failpoints.reach("commit", name)
        assert sfd is not None
        check_name(name)
        if not action.exists:
            try:
                rename(name, name, src_dir=sfd, dst_dir=rfd)  # RENAME_NOREPLACE
            except FileExistsError:
                if self._live_dir(name) is not None:  # a symlink or mount point is refused
                    raise ApplyError(
                        f"{self.root / name} was made since the plan; bpforch never replaces "
                        "what the plan did not prove its own (apply again: the next plan "
                        "sees it)"
                    ) from None
            else:
                self.journal.add(
                    f"move {name} back", partial(rename, name, name, src_dir=rfd, dst_dir=sfd)
                )
                return
        if not self._proven_live(name, action.ident):  # gone since the plan: move into place
            rename(name, name, src_dir=sfd, dst_dir=rfd)
            self.journal.add(
                f"move {name} back", partial(rename, name, name, src_dir=rfd, dst_dir=sfd)
            )
            return
        # swap old and new trees atomically
        rename(name, name, exchange=True, src_dir=sfd, dst_dir=rfd)
        self.journal.add(
            f"swap {name} back",
            partial(rename, name, name, exchange=True, src_dir=sfd, dst_dir=rfd),
        )

    def _delete(self, action: Delete) -> None:
        """Move a deleted collection's tree into the staging directory (it goes with the
        release): only the directory the plan proved ours."""
        name = action.collection
        rfd, sfd = self.root_fd, self.staging_fd
        self.failpoints.reach("commit", name)
        if not self._proven_live(check_name(name), action.ident):
            return
        assert sfd is not None
        rename(name, name, src_dir=rfd, dst_dir=sfd)
        self.journal.add(f"restore {name}", partial(rename, name, name, src_dir=sfd, dst_dir=rfd))

    def _release(self) -> None:
        """The record is written: the old generation (its trees now in the staging
        directory) is about to go. If this step fails, the rest of the release is left to
        the next apply."""
        sfd = self.staging_fd
        if sfd is None:
            return
        try:
            self.failpoints.reach("release", "")
        except Exception as err:
            self.staging_fd = None
            os.close(sfd)
            self.complete = False
            self.warnings.append(f"release: {err} (the next apply removes {self.staging})")

    def _detach_old(self, action: Detach) -> None:
        """Detach a link of the old generation through its pin in the old tree (now in the
        staging directory), if that pin still holds it and the new record does not list it;
        nothing is reached through a symlink."""
        sfd, ra = self.staging_fd, action.link
        assert self.record is not None
        if sfd is None:
            return  # the release failed: the next apply removes the leftovers
        keep = {a.link_id for c in self.record.collections.values() for a in c.attachments.values()}
        if ra.link_id in keep:
            return
        *dirs, leaf = [action.collection, *ra.pin.split("/")]
        with contextlib.ExitStack() as stack:
            cur = sfd
            try:
                for part in dirs:
                    cur = open_dir_at(cur, part)
                    stack.callback(os.close, cur)
                fd = open_pin_at(cur, leaf)
            except FileNotFoundError:
                return  # no tree, or no pin: nothing holds the link there
            except (ebpf.Error, OSError) as err:
                if getattr(err, "errno", None) == errno.ENOENT:
                    return
                self.warnings.append(f"release {self.staging}/{action.collection}/{ra.pin}: {err}")
                return
            try:
                with _links.Link.from_fd(fd) as link:
                    if link.id == ra.link_id:
                        detach(link)
            except (ebpf.Error, OSError) as err:
                self.warnings.append(f"release {self.staging}/{action.collection}/{ra.pin}: {err}")

    def _remove_staging(self) -> None:
        """Remove the staging directory with the old trees: what only they pinned goes."""
        sfd = self.staging_fd
        if sfd is None:
            return
        self.staging_fd = None
        os.close(sfd)
        self._remove(self.staging.name, "release")

    def _mark_old(self, action: Mark) -> None:
        """Mark a recorded collection made before ownership markers existed (its record
        proves it ours)."""
        try:
            fd = open_dir_at(self.root_fd, action.collection)
            try:
                mark_collection(fd, self.token, action.record, self.txid)
            finally:
                os.close(fd)
        except (OSError, ebpf.Error) as err:
            self.warnings.append(f"mark {self.root / action.collection}: {err}")
