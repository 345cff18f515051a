"""
The one parser for JSON that comes in (request bodies, and payloads a source receives):
C{json.loads} plus the two refusals it lacks; and L{compact_json}, the one encoder of
JSON that goes out (lines on the wire, values written to Redis).

  - Nesting deeper than a limit: C{json.loads} recurses once per level, so ten thousand
    C{[} end in a RecursionError (an internal error and a traceback) instead of a
    clear refusal naming the body.
  - C{NaN}, C{Infinity} and C{-Infinity}: Python accepts them, JSON does not, and a
    reader's C{JSON.parse} rejects a line that carries one.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

#: The default of the C{max_json_depth} setting.
DEFAULT_MAX_DEPTH = 64


def compact_json(value: Any, allow_nan: bool = True) -> bytes:
    """C{value} as UTF-8 JSON on one line, with no spaces (C{allow_nan=False}: refuse
    NaN and the infinities with C{ValueError})."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=allow_nan).encode()


class InvalidJSON(ValueError):
    """Text that is not JSON streamd accepts; C{str()} says why, for the client."""


def _refuse_constant(name: str) -> None:
    raise InvalidJSON(f"not valid JSON ({name} is not a JSON number: send null or a string)")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
#: For bytes.translate: "{" and "}" become "[" and "]" (JSON nests them properly, so
#: one kind of bracket tells the depth), and every other byte is deleted.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_STEP = [0] * 256
_STEP[ord("[")], _STEP[ord("]")] = 1, -1
_ROUNDS = 8


def nested_deeper(raw: bytes, max_depth: int) -> bool:
    """
    Whether arrays and objects nest more than C{max_depth} deep in C{raw} (UTF-8 JSON
    text), found without recursing: brackets inside strings do not count.
    """
    # Escaped backslashes first (pairs, from the left, as JSON reads them); then an
    # escaped quote, which does not end a string.
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(raw.split(b'"')[::2])  # what is between the strings
    brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
    if b"[" * (max_depth + 1) in brackets:
        return True  # the usual attack, found by one search
    # A round takes away the innermost level (every "[]") in C: most bodies are gone
    # after a few. Each round costs a pass over all that is left, so after a few the
    # rest is measured bracket by bracket (one pass, whatever the depth).
    rounds = min(_ROUNDS, max_depth)
    for _ in range(rounds):
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            return False  # nothing left, or not JSON (the parser will say)
        brackets = inner
    deepest = max(accumulate(map(_STEP.__getitem__, brackets)), default=0)
    return deepest + rounds > max_depth


def parse(raw: bytes, max_depth: int | None = None) -> Any:
    """
    The JSON value of C{raw} (UTF-8, or UTF-16/32 as C{json.loads} detects them).

    Raises L{InvalidJSON} for anything that is not JSON, for C{NaN} and the infinities,
    and for arrays and objects nested more than C{max_depth} deep (C{None}: only as
    deep as the parser can go).
    """
    encoding = json.detect_encoding(raw)
    try:
        text = raw.decode(encoding, "surrogatepass")
    except UnicodeDecodeError as e:
        raise InvalidJSON(f"not valid JSON ({e})") from None
    # Nesting cannot exceed the number of opening brackets, and counting them costs
    # two passes in C: only a body with many brackets pays for the scan.
    if max_depth is not None and raw.count(b"[") + raw.count(b"{") > max_depth:
        utf8 = raw if encoding.startswith("utf-8") else text.encode("utf-8", "surrogatepass")
        if nested_deeper(utf8, max_depth):
            raise InvalidJSON(f"arrays and objects nested deeper than max_json_depth "
                              f"({max_depth} levels)")
    try:
        return _DECODER.decode(text)
    except InvalidJSON:
        raise
    except ValueError as e:  # also an integer of over 4300 digits (int's own limit)
        raise InvalidJSON(f"not valid JSON ({e})") from None
    except RecursionError:
        raise InvalidJSON("arrays and objects nested too deep to parse") from None
