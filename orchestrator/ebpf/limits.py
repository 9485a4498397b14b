"""The verifier's fixed budget, in a module of its own so that the reconciler's budget
warnings (``bpforch plan``) can use it without importing the verifier-log parser
(:mod:`orchestrator.ebpf.verifier`, which re-exports both names)."""

from __future__ import annotations

__all__ = ["BUDGET", "BUDGET_WARNING"]

# BPF_COMPLEXITY_LIMIT_INSNS (include/linux/bpf.h): the instructions the verifier may process
# for one program, counting every path and every loop iteration it walks.
BUDGET = 1_000_000
# Above this share of the budget, apply, plan and status warn.
BUDGET_WARNING = 0.8
