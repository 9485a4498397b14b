"""The apply transaction: stage → switch → commit, or roll back to the old generation.

:class:`Transaction` runs the actions of a :class:`~orchestrator.reconcile.plan.Plan`
(:mod:`orchestrator.reconcile.actions`), in their order, and decides nothing the plan did not
say: it turns the names and records in the actions into kernel handles, and checks that the
kernel still is what the plan saw (the object it read, the link a pin holds). The steps live
in :mod:`.stage` (Stage, Keep), :mod:`.switch` (the link actions), :mod:`.commit` (seal,
commit, delete, and the release after the record); :mod:`.journal` is the undo list.

Layout on bpffs (nothing ever carries a version or generation in its name)::

    <root>/<collection>/maps/<map>        the maps the collection pins (see below)
    <root>/<collection>/progs/<program>
    <root>/<collection>/links/<link>      one pin per attachment
    <root>/_staging-<txid>/<collection>/…  the next generation while it is being built

bpffs refuses names with a dot, so pins use ``_`` (``.rodata`` is pinned as ``_rodata``).

A map is pinned when :func:`~orchestrator.reconcile.rules.pin_reason` says so (``pin: true``,
preserved, substituted by another collection, a prog array); any other map lives as long
as the programs that use it and is recorded by id (a map that no loaded program holds and
nothing pins is not kept). Pinning or unpinning a live map needs no reload: the kept
collection's next tree has the pin or lacks it.

Steps, each with what its rollback does:

1. **stage** (per changed collection, dependencies first): read the object, rewrite
   constants, hand over preserved maps and substitutions as map replacements (a
   substitution from a collection staged in the same transaction uses its staged map), load
   through the verifier, pin the new tree under the staging directory (preserved maps get a
   second pin there). *Rollback*: close every fd, remove the staging tree.
   **entries**: a map's declared entries (``entries:``) are written right after its
   collection is staged, to the staged map (before any link switches to it) or to the live
   one in place, with batch operations where the kernel has them (BPF_MAP_UPDATE_BATCH,
   BPF_MAP_DELETE_BATCH). *Rollback*: the entries changed are put back as they were.
2. **switch** (per attachment): xdp/tcx/cgroup/netns links are switched to the new program
   with ``BPF_LINK_UPDATE`` (the hook is never empty) and pinned again in the staging tree;
   tracepoint/raw_tp/uprobe links are replaced make-before-break (the new link is attached
   and pinned in the staging tree, the old one lives until release); new attachments get new
   links. A tcx attachment placed anew (``before``/``after`` changed) gets a new link for a
   fresh program instance (loaded from the same object with the live maps when the
   collection's programs are kept) before the old link goes, since a tcx link cannot move
   and a hook takes a program once. An XDP attachment whose mode changes is done last: its
   link is detached and the program attached again in the new mode (a link's mode is fixed
   and the kernel refuses native and generic programs on one interface at once), so the
   interface runs no XDP program for a moment. An XDP attachment with ``take_over: true``
   whose interface runs a foreign program attached through netlink detaches that program
   first (only if it is still the one seen: ``XDP_FLAGS_REPLACE`` with its fd) and attaches
   our link right after: the kernel refuses ``BPF_LINK_CREATE`` while a netlink program is
   attached (EBUSY) and has no atomic switch from one to a link, so the interface runs no
   XDP program for about one RCU grace period (10-25 ms measured for veth on 6.18).
   *Rollback*: each updated link is switched back to
   the program it ran before, each new link is detached, a taken-over program is attached
   again through netlink in its old mode (the transaction holds an fd of it until the end),
   and an XDP program re-attached for its mode is attached again in its old mode by a new
   link pinned where the old one was (the next apply sees that pin as replaced and
   re-attaches).
3. **commit**: each staged collection directory is swapped with the live one in one
   ``renameat2(RENAME_EXCHANGE)`` (or moved into place if new); deleted collections are moved
   into the staging directory; then the record is written atomically. *Rollback* (if the
   record can't be written): every swap and move is undone, then steps 2 and 1 are undone.
4. **release** (after the record is written, cannot fail the apply): links of the old
   generation that are not carried over are detached, and the staging directory (now holding
   the old trees) is removed, unpinning old programs and maps that were not carried over.

A crash (kill -9) leaves, per collection, the old or the new tree at its place, plus a
staging directory; :func:`observe` reports the difference from the record as drift and the
staging directory as garbage, and the next apply removes the garbage and converges.
"""

from __future__ import annotations

import os

from orchestrator import ebpf
from orchestrator.ebpf.inspect import open_dir_at, remove_tree_at
from orchestrator.reconcile.actions import (
    Action,
    Attach,
    ClaimRoot,
    Commit,
    Delete,
    Detach,
    Keep,
    KeepLink,
    MakeBeforeBreak,
    Mark,
    OpenStaging,
    Reattach,
    Release,
    ReleaseRoot,
    RemoveLeftover,
    RemoveStaging,
    Seal,
    Stage,
    SwitchLink,
    Unchanged,
    WriteEntries,
    WriteRecord,
)
from orchestrator.reconcile.errors import ApplyError, where
from orchestrator.reconcile.owner import MARK_PIN, claim_root, mark_staging, release_root
from orchestrator.reconcile.store import write_record
from orchestrator.reconcile.transaction.base import TransactionBase, pin_name
from orchestrator.reconcile.transaction.commit import CommitSteps
from orchestrator.reconcile.transaction.entries import EntrySteps
from orchestrator.reconcile.transaction.stage import StageSteps
from orchestrator.reconcile.transaction.switch import SwitchSteps


class Transaction(StageSteps, EntrySteps, SwitchSteps, CommitSteps):
    """One apply or destroy: runs the actions of ``plan``, in order, and nothing else. Use
    once: :meth:`run` (or :meth:`verify`, a kernel dry run)."""

    def verify(self) -> None:
        """A kernel dry run: the plan's Stage and Keep actions load every changed collection
        through the verifier (with its preserved maps and substitutions as replacements, so
        incompatibilities show), then everything is closed. Nothing is pinned, attached or
        recorded."""
        self.verify_only = True
        try:
            for action in self.plan.actions:
                if isinstance(action, Stage | Keep):
                    self._do(action)
            self.verified = {
                name: {p: prog.verified_insns for p, prog in st.programs.items()}
                for name, st in self.staged.items()
            }
        except Exception as err:
            self._close_all()
            located = isinstance(err, ApplyError) and err.collection != ""
            what = where(*self.current) + ": " if self.current[0] and not located else ""
            raise ApplyError(f"{what}{err} (kernel dry run: nothing was changed)") from err
        self._close_all()

    def run(self) -> tuple[dict[str, int], list[str]]:
        """Run the plan's actions; return the generations in the new record and the
        warnings of the steps after the commit. Any failure up to the record write undoes
        every step (the previous generation is live again); after it, failures are
        warnings (leftovers the next apply removes)."""
        actions = self.plan.actions
        end = next(i for i, a in enumerate(actions) if isinstance(a, WriteRecord)) + 1
        self.current = ("", None)
        try:
            for action in actions[:end]:
                self._do(action)
        except BaseException as err:
            problems = self._rollback()
            self._close_all()
            if not isinstance(err, Exception):
                raise
            located = isinstance(err, ApplyError) and err.collection != ""
            what = where(*self.current) + ": " if self.current[0] and not located else ""
            extra = ""
            if problems:
                extra = " (rollback was incomplete: " + "; ".join(problems) + ")"
            else:
                extra = " (nothing was changed: the previous generation is live)"
            raise ApplyError(f"{what}{err}{extra}") from err
        self._close_all()
        for action in actions[end:]:
            self._do(action)
        assert self.record is not None
        return {n: c.generation for n, c in self.record.collections.items()}, self.warnings

    def _do(self, action: Action) -> None:
        """Run one action (each step does what its action says; see
        :mod:`orchestrator.reconcile.actions` for the order)."""
        match action:
            case RemoveLeftover():
                # an interrupted apply's staging directory (its marker proves it ours, and
                # we hold the lock): only unpinned, since a link there may be live in the
                # tree too
                self._remove(action.path.name, f"staging leftover {action.path}")
            case ClaimRoot():
                self.token = claim_root(self.root_fd, self.state_dir)
                self.claimed = True
            case OpenStaging():
                os.mkdir(self.staging.name, 0o700, dir_fd=self.root_fd)
                self.staging_fd = open_dir_at(self.root_fd, self.staging.name)
                mark_staging(self.staging_fd, self.token, self.txid)
            case Unchanged():
                pass
            case Stage():
                self._stage(action)
            case Keep():
                self._keep(action)
            case WriteEntries():
                if not self.verify_only:
                    self._write_entries(action)
            case KeepLink() | SwitchLink() | Attach() | MakeBeforeBreak() | Reattach():
                self._link(action)
            case Seal():
                self.current = ("", None)
                self.record = self._new_record(action)
                self.texts.clear()
                self._mark(self.record)
            case Commit():
                self._commit(action)
            case Delete():
                self._delete(action)
            case WriteRecord():
                self.failpoints.reach("record", "")
                assert self.record is not None
                write_record(self.state_dir, self.record, self.texts)
            case Release():
                self._release()
            case Detach():
                self._detach_old(action)
            case RemoveStaging():
                self._remove_staging()
            case Mark():
                self._mark_old(action)
            case ReleaseRoot():
                # the record is empty: unless a tree was left behind, nothing under the
                # root is bpforch's any more
                assert self.record is not None
                if not self.record.collections and self.complete and self.token:
                    release_root(self.root_fd, self.token)
            case _:
                raise AssertionError(f"unknown action {action!r}")

    def _rollback(self) -> list[str]:
        problems = self.journal.rollback()
        if self.staging_fd is not None:
            os.close(self.staging_fd)
            self.staging_fd = None
            try:
                result = remove_tree_at(
                    self.root_fd, self.staging.name, shown=os.fspath(self.staging), last=MARK_PIN
                )
            except (OSError, ebpf.Error) as err:
                problems.append(f"remove {self.staging}: {err}")
            else:
                if result.left:
                    problems.append(f"remove {self.staging}: left {', '.join(result.left)}")
        if self.claimed and not problems and self.complete:
            release_root(self.root_fd, self.token)  # nothing under the root is ours
        return problems

    def _close_all(self) -> None:
        for st in self.staged.values():
            if st.coll is not None:
                st.coll.close()
        for obj in self.owned:
            obj.close()
        self.owned.clear()
        self.btf.close()


__all__ = ["Transaction", "TransactionBase", "pin_name"]
