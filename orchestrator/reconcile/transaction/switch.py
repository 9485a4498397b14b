"""Switch: the plan's link actions (a link kept, switched in place, attached anew, or
re-attached for its XDP mode), each with its undo."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from functools import partial
from pathlib import Path

from orchestrator import ebpf
from orchestrator.ebpf import Program, ProgType
from orchestrator.ebpf import link as _links
from orchestrator.ebpf.errors import AttachConflictError
from orchestrator.ebpf.inspect import open_dir_at, pin_at
from orchestrator.manifest.model import (
    Attachment,
    CgroupTarget,
    NetnsTarget,
    RawTracepointTarget,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpMode,
    XdpTarget,
)
from orchestrator.reconcile.actions import KeepLink, LinkAction, Reattach, SwitchLink
from orchestrator.reconcile.errors import ApplyError, where
from orchestrator.reconcile.transaction.base import Staged, TransactionBase, check_name


class SwitchSteps(TransactionBase):
    """The link actions: KeepLink, SwitchLink, Attach, MakeBeforeBreak, Reattach."""

    def _link(self, action: LinkAction) -> None:
        """Run one attachment action: its link (the live one, switched or kept, or a new
        one) ends up pinned at the action's pin in the staged tree."""
        name, a, key = action.collection, action.attachment, action.key
        st = self.staged[name]
        self.current = (name, a.source or st.desired.source)
        prog = st.programs.get(a.program)
        if prog is None:
            raise ApplyError(
                f"{where(*self.current)}: attachment {key}: program "
                f"{a.program} is not loaded (add it to programs:)",
                collection=name,
            )
        pin = f"{st.rel}/{action.pin}"  # in the staging directory
        if isinstance(action, Reattach):
            self._reattach_xdp(action, prog, pin)
            return
        if isinstance(action, KeepLink):
            # kept as it is: the same link gets a second pin in the new tree
            link = _links.Link.from_fd(self._open(name, action.link.pin))
            self.owned.append(link)
        elif isinstance(action, SwitchLink):
            link = _links.Link.from_fd(self._open(name, action.link.pin))
            self.owned.append(link)
            # undo target: whatever the link runs now (after a crash, that may not be
            # the recorded program)
            before = Program.from_id(link.program_id)
            self.owned.append(before)
            if before.id != prog.id:  # it may run it already (an interrupted apply)
                self.failpoints.reach("switch", key)
                link.update(prog, before)
                self.journal.add(f"switch link {link.id} back", partial(link.update, before, prog))
        else:
            self.failpoints.reach("attach", key)
            link = self._attach(st, prog, a, action.take_over)
            self.owned.append(link)
            self.journal.add(f"detach new link {link.id}", partial(detach, link))
        self._pin_staged(link, pin)
        st.links[key] = (link, action.link_kind, action.pin)

    def _reattach_xdp(self, action: Reattach, prog: Program, pin: str) -> None:
        """Attach ``prog`` anew where our link ``action.link`` runs now: that link is
        detached first (``BPF_LINK_DETACH``), since the kernel fixes an XDP link's mode when
        it is made and refuses native and generic programs on one interface at once
        (EEXIST), so the interface runs no XDP program between the two calls (the interface
        is looked up before, to keep that short). Undo attaches the old program again in
        its old mode by a new link pinned in the old one's place; the next apply then sees
        that pin as replaced and attaches anew. A link pinned there that no longer holds the
        interface (detached, or the interface gone) is left to the release step."""
        name, t, key, ra = action.collection, action.attachment.target, action.key, action.link
        assert isinstance(t, XdpTarget)
        index = _links.ifindex(t.interface, t.netns)
        live = f"{check_name(name)}/{ra.pin}"
        try:
            old: _links.Link | None = _links.Link.from_fd(self._open(name, ra.pin))
        except ApplyError:
            old = None  # gone (drift): nothing holds the interface
        if old is not None:
            self.owned.append(old)
            info = old.info()
            target = info.target
            if info.attached and isinstance(target, _links.XDPTarget) and target.ifindex == index:
                before = Program.from_id(info.program_id)
                self.owned.append(before)
                mode = _links.xdp_mode(index, before.id, t.netns) or "auto"
                detach(old)
                self.journal.add(
                    f"attach {before.name} to {t.interface} again in {mode} mode",
                    partial(restore_xdp, before, index, mode, t.netns, self.root_fd, live),
                )
        self.failpoints.reach("attach", key)
        mode = "auto" if t.mode is XdpMode.AUTO else t.mode.value
        link = self._attach_xdp(prog, t, mode, key, action.take_over, index)
        self.owned.append(link)
        self.journal.add(f"detach new link {link.id}", partial(detach, link))
        self._pin_staged(link, pin)
        self.staged[name].links[key] = (link, action.link_kind, action.pin)

    def _attach_xdp(
        self,
        prog: Program,
        t: XdpTarget,
        mode: str,
        key: str,
        take_over: bool,
        iface: int | str | None = None,
    ) -> _links.Link:
        """Attach XDP. When the interface still holds one of our own programs whose link pin
        is gone, the kernel is releasing that link in a deferred work item
        (bpf_link_put_deferred): wait for it briefly instead of failing with EBUSY.

        With ``take_over``, a foreign program attached through netlink is detached (only if it
        is still the one seen: XDP_FLAGS_REPLACE with its fd) and the link made right after;
        the kernel offers no atomic way from a netlink program to a link (BPF_LINK_CREATE
        says EBUSY while one is attached). Rollback attaches the foreign program again, the
        way it was (netlink, same mode); the transaction holds an fd of it until the end, so
        it survives the moment it is attached nowhere."""
        ours = self.plan.own_programs  # recorded, or left by a killed apply
        deadline = time.monotonic() + 2.0
        while True:
            try:
                where = t.interface if iface is None else iface
                return _links.attach_xdp(prog, where, mode, netns=t.netns)  # type: ignore[arg-type]
            except AttachConflictError:
                held = _links.xdp_attached(t.interface, t.netns)
                if held is not None and held.prog_id not in ours:
                    if not take_over or held.link_id is not None:
                        raise
                    self._take_over(held, t, key)
                    continue
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _take_over(self, held: _links.XDPAttachment, t: XdpTarget, key: str) -> None:
        """Detach the foreign netlink-attached XDP program ``held``; undo puts it back."""
        foreign = Program.from_id(held.prog_id)
        self.owned.append(foreign)
        _links.set_xdp_netlink(held.ifindex, None, held.mode, expected=foreign, netns=t.netns)
        self.journal.add(
            f"re-attach foreign xdp program {held.prog_id} ({held.prog_name}) to {t.interface}",
            partial(_links.set_xdp_netlink, held.ifindex, foreign, held.mode, netns=t.netns),
        )
        self.failpoints.reach("take_over", key)

    def _attach(self, st: Staged, prog: Program, a: Attachment, take_over: bool) -> _links.Link:
        t = a.target
        if isinstance(t, XdpTarget):
            mode = "auto" if t.mode is XdpMode.AUTO else t.mode.value
            if mode not in ("auto", "native", "generic"):
                raise ApplyError(f"attachment {a.key()}: xdp mode {mode} is not supported")
            return self._attach_xdp(prog, t, mode, a.key(), take_over)
        if isinstance(t, TcTarget):
            # before/after name another program of this collection at the same hook (it must
            # be attached already: declare it earlier)
            before = st.links.get(f"{t.before}@{t.key()}") if t.before else None
            after = st.links.get(f"{t.after}@{t.key()}") if t.after else None
            for anchor, name in ((before, t.before), (after, t.after)):
                if name and anchor is None:
                    raise ApplyError(
                        f"attachment {a.key()}: {name} is not attached at {t.key()} before it "
                        "(declare that attachment first)"
                    )
            return _links.attach_tcx(
                prog,
                t.interface,
                t.direction.value,
                before=before[0] if before is not None else None,
                after=after[0] if after is not None else None,
                netns=t.netns,
            )
        if isinstance(t, CgroupTarget):
            return _links.attach_cgroup(prog, t.path, t.attach)
        if isinstance(t, TracepointTarget):
            return _links.attach_tracepoint(prog, t.group, t.name)
        if isinstance(t, RawTracepointTarget):
            # a tp_btf program's tracepoint was fixed at load time (attach_btf_id): the
            # kernel refuses a name for it
            tp_btf = prog.type == ProgType.TRACING
            return _links.attach_raw_tracepoint(prog, None if tp_btf else t.name)
        if isinstance(t, UprobeTarget):
            return _links.attach_uprobe(
                prog, t.path, t.symbol, t.offset, retprobe=t.retprobe, pid=t.pid
            )
        assert isinstance(t, NetnsTarget)
        at = "sk_lookup" if prog.type == ProgType.SK_LOOKUP else "flow_dissector"
        return _links.attach_netns(prog, t.netns, at)


def kernel_mode(link: _links.Link, target: object) -> str:
    """The mode the kernel runs an XDP link's program in ("" for other targets, or if the
    kernel does not say)."""
    if not isinstance(target, XdpTarget):
        return ""
    info = link.info()
    if not isinstance(info.target, _links.XDPTarget):
        return ""
    return _links.xdp_mode(info.target.ifindex, info.program_id, target.netns) or ""


def restore_xdp(
    prog: Program, index: int, mode: str, netns: Path | None, root_fd: int, pin: str
) -> None:
    """Undo of an XDP re-attach: ``prog`` attached again in ``mode`` by a new link, pinned
    where the old (detached) link was pinned (``pin``, relative to the root, reached without
    following a symlink). The record still names the old link, so the next observe reports
    the pin as replaced and the next apply attaches anew."""
    how: _links.XDPMode = (
        "native" if mode == "native" else "generic" if mode == "generic" else "auto"
    )
    link = _links.attach_xdp(prog, index, how, netns=netns)
    *dirs, leaf = pin.split("/")
    with link, contextlib.ExitStack() as stack:
        cur = root_fd
        for d in dirs:
            cur = open_dir_at(cur, d)
            stack.callback(os.close, cur)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.stat(leaf, dir_fd=cur, follow_symlinks=False).st_mode):
                os.unlink(leaf, dir_fd=cur)  # the old link's pin (a symlink there stays)
        pin_at(link.fd, cur, leaf)


def detach(link: _links.Link) -> None:
    """Detach now where the link type allows it; perf_event and raw_tp links detach when
    their last fd and pin go."""
    try:
        link.detach()
    except ebpf.NotSupportedError:
        pass
    except ebpf.Error as err:
        if getattr(err, "errno", None) != errno.ENOLINK:
            raise
