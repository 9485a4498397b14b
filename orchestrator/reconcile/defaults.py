"""Where bpforch keeps its pins and its record unless told otherwise (a module of its own so
that the command line's help can name them without importing the reconciler)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BPFFS_ROOT = Path("/sys/fs/bpf/bpforch")
DEFAULT_STATE_DIR = Path("/run/bpforch")
