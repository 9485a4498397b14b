"""Suggestions for error messages that name something that is not there: "did you mean"?

The loader says ``map countres: not in collection (did you mean counters?)``; the manifest
layer reports the same suggestion in a problem's hint, quoted: ``did you mean 'counters'?``.
Every such suggestion in bpforch comes from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.ebpf.errors import clip, quote

__all__ = ["closest", "did_you_mean", "hint"]


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice that ``word`` is most likely a misspelling of, None if none is close."""
    if len(word) >= 256:
        return None  # a long word matches nothing, and difflib's cost grows with its length
    import difflib  # only when something is misspelt: most commands never import it

    found = difflib.get_close_matches(word, choices, n=1)
    return found[0] if found else None


def did_you_mean(
    word: str,
    choices: Sequence[str],
    *,
    quoted: bool = True,
    listing: str | None = "it has",
    limit: int | None = 8,
) -> str:
    """``did you mean 'x'?`` for the choice closest to ``word``. Else, unless ``listing`` is
    None, the choices after it (``it has: a, b, …``, at most ``limit`` of them); else "".

    The suggestion is quoted as messages quote values (:func:`~orchestrator.ebpf.errors.quote`:
    ``repr``, so a name with a quote or a control character in it reads unambiguously), or,
    with ``quoted=False``, shown as it is; either way a name longer than
    :data:`~orchestrator.ebpf.errors.QUOTE_MAX` characters is cut, with its length said, as
    is every listed choice (:func:`~orchestrator.ebpf.errors.clip`): an object with a
    50 MB name costs a line.
    """
    close = closest(word, choices)
    if close is not None:
        return f"did you mean {quote(close) if quoted else clip(close)}?"
    if listing is None or not choices:
        return ""
    shown = list(choices if limit is None else choices[:limit])
    more = ", …" if limit is not None and len(choices) > limit else ""
    return f"{listing}: {', '.join(clip(c) for c in shown)}{more}"


def hint(word: str, choices: Sequence[str]) -> str:
    """:func:`did_you_mean` as the end of a loader error message: `` (did you mean x?)``,
    `` (it has: a, b, …)``, or "" when there is nothing to say."""
    text = did_you_mean(word, choices, quoted=False)
    return f" ({text})" if text else ""
