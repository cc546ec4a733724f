"""Selectors: a small boolean language over node facts.

Grammar (keywords are lower case; values may be quoted with ' or ")::

    expr       := or_expr
    or_expr    := and_expr ( "or" and_expr )*
    and_expr   := not_expr ( "and" not_expr )*
    not_expr   := "not" not_expr | primary
    primary    := "(" expr ")" | comparison
    comparison := KEY "=" VALUE | KEY "!=" VALUE | KEY "~=" GLOB
                | KEY "in" "(" VALUE ( "," VALUE )* ")"

Examples: ``role=web and env!=prod``, ``os in (debian, ubuntu)``,
``name~=web-*``, ``not (tier=db or tier=cache)``.

Matching rules: fact values are compared as strings (``cpu_count=2``
works); a fact that is a list (``addresses``) matches when any element
does; a missing fact never equals anything, so ``k!=v`` holds for it. An
empty or ``None`` selector matches every node.

This module is standalone (stdlib and the error tree only) because trust
scopes and push-style runs use it as well as the convergence engine.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Any, Mapping

from grapevine.gossip.errors import PolicyError
from grapevine.gossip.wire import MAX_SELECTOR_CHARS

__all__ = ["Selector", "SelectorSyntaxError", "parse", "matches", "EVERYTHING"]

# A selector is written by a person and travels inside signed items, run orders and discovery
# queries; anything longer than MAX_SELECTOR_CHARS (gossip/wire.py) is a mistake or an attack on the parser.
# Parentheses and `not` nest; bound the recursion well below Python's limit.
MAX_DEPTH = 64

_OPS = ("!=", "~=", "=")
_KEYWORDS = {"and", "or", "not", "in"}
# Characters that end a bare word (everything else, including glob
# metacharacters * ? [ ], belongs to the word).
_STOP = set(" \t\r\n()=,!~'\"")


class SelectorSyntaxError(PolicyError):
    """A selector that does not parse; ``position`` is the 0-based offset, ``message`` what is wrong there."""

    def __init__(self, text: str, position: int, message: str) -> None:
        self.text = text
        self.position = position
        self.message = message
        caret = " " * position + "^"
        super().__init__(
            f"bad selector {text!r}: {message} at position {position}\n  {text}\n  {caret}"
        )


# ---------------------------------------------------------------- the tree


def _as_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(_scalar(v) for v in value)
    return (_scalar(value),)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quote(value: str) -> str:
    if value and not any(c in _STOP for c in value) and value not in _KEYWORDS:
        return value
    return "'" + value + "'" if "'" not in value else '"' + value + '"'


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    key: str
    op: str  # "=", "!=", "~=", "in"
    values: tuple[str, ...]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        have = _as_strings(facts.get(self.key))
        if self.op == "=":
            return self.values[0] in have
        if self.op == "!=":
            return self.values[0] not in have
        if self.op == "in":
            return any(v in self.values for v in have)
        pattern = self.values[0]
        return any(fnmatch.fnmatchcase(v, pattern) for v in have)

    def __str__(self) -> str:
        if self.op == "in":
            return f"{self.key} in ({', '.join(_quote(v) for v in self.values)})"
        return f"{self.key}{self.op}{_quote(self.values[0])}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Not:
    inner: "Node"

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return not self.inner.matches(facts)

    def __str__(self) -> str:
        return f"not {_wrap(self.inner)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class And:
    parts: tuple["Node", ...]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return all(p.matches(facts) for p in self.parts)

    def __str__(self) -> str:
        return " and ".join(_wrap(p) for p in self.parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Or:
    parts: tuple["Node", ...]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return any(p.matches(facts) for p in self.parts)

    def __str__(self) -> str:
        return " or ".join(_wrap(p) for p in self.parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Everything:
    def matches(self, facts: Mapping[str, Any]) -> bool:
        return True

    def __str__(self) -> str:
        return ""


Node = Compare | Not | And | Or | Everything


def _wrap(node: Node) -> str:
    return f"({node})" if isinstance(node, (And, Or)) else str(node)


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """A parsed selector; ``str()`` gives a canonical spelling."""

    text: str
    tree: Node

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return self.tree.matches(facts)

    def keys(self) -> frozenset[str]:
        """The fact names this selector reads."""
        out: set[str] = set()
        stack: list[Node] = [self.tree]
        while stack:
            node = stack.pop()
            if isinstance(node, Compare):
                out.add(node.key)
            elif isinstance(node, Not):
                stack.append(node.inner)
            elif isinstance(node, (And, Or)):
                stack.extend(node.parts)
        return frozenset(out)

    def __str__(self) -> str:
        return str(self.tree)


EVERYTHING = Selector(text="", tree=Everything())


# ---------------------------------------------------------------- the lexer


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "word", "str", "op", "(", ")", ",", "end"
    value: str
    pos: int


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c in "(),":
            toks.append(_Tok(c, c, i))
            i += 1
            continue
        if c in "!~=":
            for op in _OPS:
                if text.startswith(op, i):
                    toks.append(_Tok("op", op, i))
                    i += len(op)
                    break
            else:
                raise SelectorSyntaxError(text, i, f"unexpected {c!r} (operators are =, !=, ~=, in)")
            continue
        if c in "'\"":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorSyntaxError(text, i, "unterminated quoted value")
            toks.append(_Tok("str", text[i + 1 : end], i))
            i = end + 1
            continue
        start = i
        while i < n and text[i] not in _STOP:
            i += 1
        toks.append(_Tok("word", text[start:i], start))
    toks.append(_Tok("end", "", n))
    return toks


# ---------------------------------------------------------------- the parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, tok: _Tok, message: str) -> SelectorSyntaxError:
        found = "end of input" if tok.kind == "end" else repr(tok.value)
        return SelectorSyntaxError(self.text, tok.pos, f"{message}, found {found}")

    def is_kw(self, tok: _Tok, word: str) -> bool:
        return tok.kind == "word" and tok.value == word

    def parse(self) -> Node:
        node = self.or_expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(tok, "expected 'and', 'or' or the end")
        return node

    def or_expr(self, depth: int) -> Node:
        parts = [self.and_expr(depth)]
        while self.is_kw(self.peek(), "or"):
            self.take()
            parts.append(self.and_expr(depth))
        return parts[0] if len(parts) == 1 else Or(parts=tuple(parts))

    def and_expr(self, depth: int) -> Node:
        parts = [self.not_expr(depth)]
        while self.is_kw(self.peek(), "and"):
            self.take()
            parts.append(self.not_expr(depth))
        return parts[0] if len(parts) == 1 else And(parts=tuple(parts))

    def not_expr(self, depth: int) -> Node:
        tok = self.peek()
        if depth > MAX_DEPTH:
            raise self.error(tok, f"nested deeper than {MAX_DEPTH}")
        if self.is_kw(tok, "not"):
            self.take()
            return Not(inner=self.not_expr(depth + 1))
        if tok.kind == "(":
            self.take()
            node = self.or_expr(depth + 1)
            close = self.peek()
            if close.kind != ")":
                raise self.error(close, "expected ')'")
            self.take()
            return node
        return self.comparison()

    def value(self, what: str) -> str:
        tok = self.peek()
        if tok.kind == "str" or (tok.kind == "word" and tok.value not in _KEYWORDS):
            self.take()
            return tok.value
        raise self.error(tok, f"expected {what}")

    def comparison(self) -> Node:
        tok = self.peek()
        if tok.kind != "word" or tok.value in _KEYWORDS:
            raise self.error(tok, "expected a fact name")
        key = self.take().value
        op = self.peek()
        if op.kind == "op":
            self.take()
            value = self.value(f"a value after '{op.value}'")
            return Compare(key=key, op=op.value, values=(value,))
        if self.is_kw(op, "in"):
            self.take()
            if self.peek().kind != "(":
                raise self.error(self.peek(), "expected '(' after 'in'")
            self.take()
            values = [self.value("a value in the list")]
            while self.peek().kind == ",":
                self.take()
                values.append(self.value("a value after ','"))
            if self.peek().kind != ")":
                raise self.error(self.peek(), "expected ',' or ')'")
            self.take()
            return Compare(key=key, op="in", values=tuple(values))
        raise self.error(op, f"expected =, !=, ~= or 'in' after {key!r}")


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> Selector:
    if not text.strip():
        return EVERYTHING
    return Selector(text=text, tree=_Parser(text).parse())


def parse(text: str | None) -> Selector:
    """Parse a selector; ``None`` or blank text selects everything."""
    if text is None:
        return EVERYTHING
    if not isinstance(text, str):
        raise PolicyError(f"a selector must be a string, not {type(text).__name__}")
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorSyntaxError(text[:40] + "...", MAX_SELECTOR_CHARS, f"longer than {MAX_SELECTOR_CHARS} characters")
    return _parse_cached(text)


def matches(text: str | None, facts: Mapping[str, Any]) -> bool:
    """Shortcut: parse (cached) and match."""
    return parse(text).matches(facts)
