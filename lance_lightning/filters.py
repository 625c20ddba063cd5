"""A filter (or SQL split predicate) must be one whole SQL boolean expression.

lancedb parses a filter as ``SELECT 1 FROM t WHERE <filter>`` and keeps the first complete
expression; whatever follows is dropped without a word. On a table with ``id`` 0..99,
``"label = 1 id > 90"`` runs as ``label = 1``, ``"id < 50) OR (label = 1"`` as ``id < 50``,
and ``"1=1; DROP TABLE t"`` as ``1=1`` (every row). So a text is checked twice:

1. :func:`early_end` scans it with a small tokenizer that knows SQL's string literals
   (``'...'`` with ``''``), quoted identifiers (``"..."``, ```...```), dollar-quoted strings
   and comments: a ``;`` anywhere, or a ``,`` or a ``)`` outside every bracket, ends the
   expression there (a ``)`` that closes nothing would also close the parenthesis of step 2).
2. lancedb parses it enclosed, ``(<text>\\n)`` (:func:`enclose`): its parser must then reach
   that closing parenthesis, so anything it would have stopped before is a parse error (the
   newline ends a trailing ``--`` comment). When the enclosed text fails to parse but the bare
   one parses, the text was cut short; :func:`stop_offset` finds where, as the longest prefix
   (at token boundaries) that lancedb parses.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple


class Token(NamedTuple):
    start: int
    end: int
    text: str


_DOLLAR_QUOTE = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_PLACEHOLDER = re.compile(r"\$\w*")
_WORD = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}
# lancedb's messages for text its SQL tokenizer / parser refuses (as opposed to planning errors).
_PARSE_MARKERS = ("error parsing statement", "sql parser error", "invalid sql predicate", "parsererror", "tokenizer")
_FOUND = re.compile(r"Expected: \), found: (.*)\)\s*$", re.DOTALL)
_MAX_PROBES = 128  # parse attempts spent locating where parsing stopped (an error path only)


def _closing_quote(text: str, start: int, quote: str) -> int:
    """End (exclusive) of the quoted run opening at ``start``; a doubled quote is an escaped one."""
    i = start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            return len(text)  # unterminated: lancedb names it
        if text.startswith(quote, j + 1):
            i = j + 2
            continue
        return j + 1


def tokens(text: str) -> list[Token]:
    """The code tokens of ``text``: literals and quoted identifiers whole, comments and spaces left out.

    Coarse where it does not matter (each operator character is its own token), exact where it
    does: nothing inside a literal, quoted identifier or comment is ever read as code.
    """
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if text.startswith("/*", i):  # lancedb's block comments do not nest
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c in "'\"`":
            end = _closing_quote(text, i, c)
        elif c == "$":
            m = _DOLLAR_QUOTE.match(text, i)
            if m:
                j = text.find(m.group(0), m.end())
                end = n if j < 0 else j + len(m.group(0))
            else:
                end = _PLACEHOLDER.match(text, i).end()  # type: ignore[union-attr]
        elif m := _WORD.match(text, i) or _NUMBER.match(text, i):
            end = m.end()
        else:
            end = i + 1
        out.append(Token(i, end, text[i:end]))
        i = end
    return out


def early_end(text: str) -> tuple[int, str] | None:
    """``(offset, character)`` of a ``;``, or of a ``,`` / ``)`` outside every bracket; None if none."""
    depth: list[str] = []
    for tok in tokens(text):
        t = tok.text
        if t == ";" or (not depth and t in (",", ")")):
            return tok.start, t
        if t in _OPENERS:
            depth.append(t)
        elif t in _CLOSERS and depth:
            depth.pop()
    return None


def enclose(text: str) -> str:
    """``text`` in parentheses, which lancedb's parser must reach: it then parses all of ``text`` or fails."""
    return f"({text}\n)"


def is_parse_error(err: BaseException) -> bool:
    """True when lancedb refused the text itself (tokenizer or parser), not what it names."""
    message = str(err).lower()
    return any(marker in message for marker in _PARSE_MARKERS)


def plan_error(table: Any, where: str) -> Exception | None:
    """What lancedb raises planning a scan of ``table`` with ``where`` (no data is read); None if it plans."""
    try:
        table.search().where(where).explain_plan()
    except Exception as err:  # lancedb raises ValueError / RuntimeError with the parser's message
        return err
    return None


def _parses(table: Any, prefix: str) -> bool:
    err = plan_error(table, enclose(prefix))
    return err is None or not is_parse_error(err)


def _loose(token: str) -> str:
    return re.sub(r"['\"`]", "", token).lower()


def stop_offset(table: Any, text: str, err: BaseException | None = None) -> int | None:
    """Where lancedb's parser stops reading ``text``: the longest token-boundary prefix that parses.

    The token lancedb names in ``err`` (``Expected: ), found: <token>``) is tried first; None
    when no prefix parses within a bounded number of attempts.
    """
    toks = tokens(text)
    order = list(range(len(toks) - 1, 0, -1))
    found = _FOUND.search(str(err)) if err is not None else None
    if found:
        hinted = [k for k in order if _loose(toks[k].text) == _loose(found.group(1).strip())]
        order = hinted + [k for k in order if k not in hinted]
    for k in order[:_MAX_PROBES]:
        if _parses(table, text[: toks[k].start]):
            return toks[k].start
    return None


_HINTS = {
    ";": "A filter is one expression, not statements: remove the ';'.",
    ")": "That ')' closes a parenthesis the text never opened: balance the parentheses.",
    ",": "A ',' belongs inside parentheses (IN lists, function arguments): join conditions with AND / OR.",
}


def cut_short(subject: str, text: str, offset: int | None, character: str | None = None, *, detail: Any = None) -> str:
    """The message for ``text`` that lancedb would read only in part."""
    head = f"{subject} is not one whole SQL boolean expression: "
    if offset is None:
        return head + f"lancedb's parser stops before its end and would silently ignore the rest ({detail})"
    hint = _HINTS.get(character or "", "Join conditions with AND / OR, e.g. 'a = 1 AND b > 2'.")
    return head + (
        f"lancedb's parser stops at character {offset} (counting from 0) and would silently ignore the rest, "
        f"{text[offset:]!r}, reading only {text[:offset].strip()!r}. {hint}"
    )


def refusal(table: Any, text: str, subject: str, err: BaseException | None = None) -> str | None:
    """Why ``text`` is not one whole boolean expression that lancedb can run on ``table``; None if it is.

    ``subject`` names the text and its setting (``"filter 'a = 1'"``); ``err`` is what lancedb
    raised running :func:`enclose` (``text``) already, if the caller did (else it is planned here).
    """
    early = early_end(text)
    if early is not None:
        return cut_short(subject, text, *early)
    if err is None:
        err = plan_error(table, enclose(text))
        if err is None:
            return None
    bare = plan_error(table, text)
    if is_parse_error(err) and (bare is None or not is_parse_error(bare)):
        return cut_short(subject, text, stop_offset(table, text, err), detail=err)
    return f"{subject} is not a valid SQL predicate on table {table.name!r}: {bare or err}"
