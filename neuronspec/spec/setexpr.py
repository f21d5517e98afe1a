"""The small language of named neuron sets: `plnd[lang] - plnd[others]`.

    expr     := term (("|" | "&" | "-") term)*      left to right; parentheses group
    term     := "(" expr ")" | NAME ["[" selector "]"]
    selector := lang | all | any | others | <language code>

`NAME` is a detector (a *family*: one set per language) or another named set.
`[lang]` is the language the set is being built for, so an expression that uses it
(or `[others]`) defines a family too. `[all]` intersects over the study's languages
(relevant for every language), `[any]` unites them, `[others]` unites every language
but `lang` — so the exclusive language-specific set is one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

SELECTORS = ("lang", "all", "any", "others")
OPS = {"|": "union", "&": "intersection", "-": "difference"}


@dataclass(frozen=True)
class Ref:
    name: str
    selector: str | None  # None, one of SELECTORS, or a language code


@dataclass(frozen=True)
class BinOp:
    op: str  # "|", "&" or "-"
    left: "Expr"
    right: "Expr"


Expr = Union[Ref, BinOp]

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)|(?P<sym>[|&\-()\[\]]))")


class SetExprError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SetExprError(f"unexpected {text[pos:].strip()[:1]!r} at column {pos + 1} of {text!r}")
        out.append(m.group("name") or m.group("sym"))
        pos = m.end()
    return out


def parse(text: str) -> Expr:
    tokens = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            want = f"{expected!r}" if expected else "a term"
            raise SetExprError(f"expected {want} in {text!r}, found {tok!r}" if tok else f"expected {want} at the end of {text!r}")
        pos += 1
        return tok

    def term() -> Expr:
        tok = take()
        if tok == "(":
            inner = expr()
            take(")")
            return inner
        if tok in OPS or tok in "()[]":
            raise SetExprError(f"expected a set name in {text!r}, found {tok!r}")
        selector = None
        if peek() == "[":
            take("[")
            selector = take()
            take("]")
        return Ref(tok, selector)

    def expr() -> Expr:
        node = term()
        while peek() in OPS:
            op = take()
            node = BinOp(op, node, term())
        return node

    result = expr()
    if peek() is not None:
        raise SetExprError(f"unexpected {peek()!r} in {text!r}")
    return result


def refs(node: Expr) -> list[Ref]:
    if isinstance(node, Ref):
        return [node]
    return refs(node.left) + refs(node.right)


def uses_template(node: Expr, families: set[str]) -> bool:
    """Whether the expression yields one set per language (it mentions [lang]/[others])."""
    return any(r.selector in ("lang", "others") or (r.selector is None and r.name in families) for r in refs(node))
