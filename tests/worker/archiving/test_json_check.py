"""The result body's JSON check: msgspec's fast path never accepts what json.loads refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import PermanentError
from worker.archiving.fetch import check_json

DOCUMENT = json.dumps(
    {
        "file_url": "https://media.example/a.wav",
        "transcripts": [{"text": 'héllo "q" \\ \n', "words": [{"begin_time": 0, "p": 0.5}]}],
        "flags": [True, False, None, -1.5e-3, 12345678901234567890123],
        "empty": {},
    },
    ensure_ascii=False,
).encode()
ALPHABET = st.sampled_from(
    [*b'{}[],:"\\0123456789.eE+-tfnlrsua \t\n\r\x0b\x0c\x00\x1f\x7f', 0x80, 0xC3, 0xA9, 0xED, 0xFF]
)


def python_accepts(data: bytes) -> bool:
    """True when json.loads (the authority) parses ``data`` without a non-standard constant."""

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(data, parse_constant=refuse, parse_int=len)
    except RecursionError:
        return True  # valid but deep: check_json hands it to ijson (test_fetch covers it)
    except ValueError:
        return False
    return True


def check_accepts(data: bytes) -> bool:
    """True when check_json takes ``data`` as JSON; False on result_not_json."""
    try:
        check_json(data)
    except PermanentError as exc:
        assert exc.reason == "result_not_json"
        return False
    return True


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The document with a few bytes deleted, inserted or replaced."""
    data = bytearray(DOCUMENT)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        if action == "delete":
            del data[position]
        elif action == "insert":
            data.insert(position, draw(ALPHABET))
        else:
            data[position] = draw(ALPHABET)
    return bytes(data)


@settings(max_examples=3000, deadline=None)
@given(mutated())
def test_check_agrees_with_json_loads_on_mutated_documents(data: bytes) -> None:
    """On documents a few bytes away from valid, check_json and json.loads always agree."""
    assert check_accepts(data) == python_accepts(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=40) | st.lists(ALPHABET, max_size=30).map(bytes))
def test_check_agrees_with_json_loads_on_short_byte_strings(data: bytes) -> None:
    """On arbitrary short byte strings, check_json and json.loads always agree."""
    assert check_accepts(data) == python_accepts(data)


@pytest.mark.parametrize(
    "body",
    [
        DOCUMENT.decode().encode("utf-16"),  # Python reads UTF-16/32 JSON; msgspec does not
        b"\xef\xbb\xbf" + DOCUMENT,  # a UTF-8 byte-order mark
        b'{"a": "\\ud800"}',  # a lone surrogate escape
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate (json.loads decodes surrogatepass)
        b"[" * 2000 + b"]" * 2000,  # past msgspec's depth limit
    ],
    ids=["utf-16", "bom", "lone-escape", "encoded-surrogate", "deep"],
)
def test_what_only_python_reads_is_still_json(body: bytes) -> None:
    """Bodies the fast path refuses but json.loads reads are accepted by the slow path."""
    assert python_accepts(body)
    check_json(body)


@pytest.mark.parametrize(
    "body",
    [b"", b" ", b"[1] x", b'{"a":1,}', b"NaN", b'{"a":"\x01"}', b'{"a":"\xff"}', b"[1]]"],
    ids=["empty", "blank", "trailing", "comma", "nan", "control", "bad-utf8", "extra-bracket"],
)
def test_what_is_not_json_is_refused(body: bytes) -> None:
    """Malformed bodies are result_not_json, whichever path looks at them."""
    assert not check_accepts(body)
