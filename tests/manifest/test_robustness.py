"""Whatever the text, loading gives a desired state or a ManifestError: never a crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.manifest import ManifestError, load_manifests

from .test_load import FULL

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check(path: Path, text: str) -> None:
    path.write_text(text)
    try:
        load_manifests([path])
    except ManifestError as err:
        assert err.problems
        for p in err.problems:
            assert p.source.file == path and p.message
            assert p.source.line >= 0 and p.source.column >= 0


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("ab:-{}[], \n\t&*!<>'\"#|?%@`1.~")), max_size=200))
def test_random_yamlish_text(tree: Path, text: str) -> None:
    (tree / "m").mkdir(exist_ok=True)
    check(tree / "m" / "a.yaml", text)


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, len(FULL) - 1), st.integers(0, 8), st.text(max_size=6)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_manifest(tree: Path, edits: list[tuple[int, int, str]]) -> None:
    text = FULL
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut :]
    (tree / "m").mkdir(exist_ok=True)
    check(tree / "m" / "a.yaml", text)
