"""The sweep search-space grammar, parsed (never evaluated).

    uniform(low, high)      loguniform(low, high)      randint(low, high)  (both ends included)
    choice(a, b, ...)       grid(a, b, ...)   (grid: every value is tried; choice: one is drawn)

Arguments are numbers, true/false/null, or strings (bare words or quoted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FUNCTIONS = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None, "grid": None}
_CALL = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class SpaceExpr:
    """One parsed dimension of a search space."""

    function: str
    args: tuple[Any, ...]


def _scalar(token: str) -> Any:
    token = token.strip()
    if not token:
        raise ValueError("empty argument")
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    if _NUMBER.match(token):
        number = float(token.replace("_", ""))
        is_int = number.is_integer() and not re.search(r"[.eE]", token)
        return int(number) if is_int else number
    if re.fullmatch(r"[A-Za-z0-9_./:-]+", token):
        return token
    raise ValueError(f"cannot read argument {token!r}: use a number, true/false, or a string")


def _split_args(body: str) -> list[str]:
    parts, current, quote = [], "", ""
    for char in body:
        if quote:
            current += char
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
            current += char
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    if quote:
        raise ValueError("unclosed quote")
    parts.append(current)
    return parts


def parse_space_expr(expr: str) -> SpaceExpr:
    """Parse one search-space expression; raise ValueError saying what is wrong."""
    usage = "expected one of " + ", ".join(f"{name}(...)" for name in FUNCTIONS)
    match = _CALL.match(str(expr))
    if not match:
        raise ValueError(f"cannot read {expr!r}: {usage}")
    function, body = match.groups()
    if function not in FUNCTIONS:
        raise ValueError(f"unknown function {function!r}: {usage}")
    args = tuple(_scalar(token) for token in _split_args(body))
    arity = FUNCTIONS[function]
    if arity is not None:
        if len(args) != arity:
            raise ValueError(f"{function}() takes {arity} arguments (low, high), got {len(args)}")
        low, high = args
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ValueError(f"{function}() takes numbers, got {expr!r}")
        if not low < high:
            raise ValueError(f"{function}(low, high) needs low < high, got {expr!r}")
        if function == "loguniform" and low <= 0:
            raise ValueError(f"loguniform() needs low > 0, got {expr!r}")
        if function == "randint" and not all(isinstance(a, int) for a in args):
            raise ValueError(f"randint() takes whole numbers, got {expr!r}")
    return SpaceExpr(function, args)


def values_to_check(expr: SpaceExpr) -> list[Any]:
    """The values a dimension can produce that are worth validating: every listed value, or
    a range's two ends."""
    return list(expr.args)


def to_tune(expr: SpaceExpr):
    """The Ray Tune search-space object for one dimension."""
    from ray import tune

    low_high = {"uniform": tune.uniform, "loguniform": tune.loguniform}
    if expr.function in low_high:
        return low_high[expr.function](*expr.args)
    if expr.function == "randint":  # inclusive of high, as written in the spec
        return tune.randint(expr.args[0], expr.args[1] + 1)
    if expr.function == "grid":
        return tune.grid_search(list(expr.args))
    return tune.choice(list(expr.args))
