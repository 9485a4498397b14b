"""Keys and values written as YAML on a command line, and printed back the same way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.ebpf.values import Hex, NetworkOrder
from orchestrator.manifest.literals import LiteralSyntaxError, parse_literal, render


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("53", 53),
        ("0x27", 0x27),
        ("-1", -1),
        ("true", True),
        ("web", "web"),
        ("'53'", "53"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("2001:db8::1", "2001:db8::1"),
        ("[1, 2, 3]", [1, 2, 3]),
        ("{port: 80, on: yes}", {"port": 80, "on": True}),
        ("!be16 9999", NetworkOrder(16, 9999)),
        ("!be32 0x0a000001", NetworkOrder(32, 0x0A000001)),
        ("!hex 27:0f:00:00", Hex(bytes([0x27, 0x0F, 0, 0]))),
        ("{key: !be16 53, v: [!hex 01]}", {"key": NetworkOrder(16, 53), "v": [Hex(b"\x01")]}),
        ("1.5", 1.5),
    ],
)
def test_parse(text: str, value: object) -> None:
    assert parse_literal(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty literal (write a value, or '' for an empty string)"),
        ("{a: 1", "invalid YAML"),
        ("!be16 70000", "70000 does not fit !be16 (unsigned)"),
        ("!be16 x", "!be16 takes an integer, got 'x'"),
        ("!hex zz", "'zz' is not hex bytes (like 270f0000)"),
        ("!ipv4 1.2.3.4", "unknown tag !ipv4 (keys and values take !be16, !be32, !be64, !hex)"),
        ("!!binary AAAA", "unknown tag tag:yaml.org,2002:binary"),
        ("{a: 1, a: 2}", "duplicate member 'a'"),
        ("{<<: {a: 1}}", "merge keys (<<) are not supported"),
        ("1" * 70, "integer of 70 digits is too large (at most 128 bits)"),
        ("a: 1\n---\nb: 2", "invalid YAML"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(LiteralSyntaxError) as exc:
        parse_literal(text)
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (53, "53"),
        ("web", "web"),
        ("53", '"53"'),
        ("yes", '"yes"'),
        ("", '""'),
        ("a b", '"a b"'),
        ("/bin/true\0-x", '"/bin/true\\u0000-x"'),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("::1", '"::1"'),
        (NetworkOrder(16, 9999), "!be16 9999"),
        (Hex(b"\x27\x0f"), "!hex 270f"),
        ({"a": [1, "x,y"]}, '{a: [1, "x,y"]}'),
        (1e20, "1.0e+20"),
        (float("nan"), ".nan"),
    ],
)
def test_render(value: object, text: str) -> None:
    assert render(value) == text


literals = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 127), max_value=(1 << 127) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.builds(NetworkOrder, st.just(16), st.integers(0, 65535))
    | st.builds(Hex, st.binary(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(literals)
def test_what_render_prints_parses_back(value: object) -> None:
    assert parse_literal(render(value)) == value
