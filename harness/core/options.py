"""Method options: typed, validated once, handed down.

A method declares its options (`Option`: kind, default, bounds, choices); `resolve` turns the
strings of `--method-arg NAME.KEY=VALUE` (or typed values) into an `Options` mapping, checking
each option and then the method's own cross-option rule. The run's validation resolves every
method's options before any model is loaded, and the method is built from that same mapping:
nothing is parsed or checked twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

AUTO = "auto"  # a shape option's default: plan it for this hardware (harness/core/planning/shapes.py)
KINDS = ("int", "float", "bool", "str", "ints", "file")


class MethodError(ValueError):
    """A method cannot be built as asked (bad option, missing weights); the message says why."""


@dataclass(frozen=True)
class Option:
    """One method option, settable as `--method-arg NAME.KEY=VALUE`. An option whose default is
    "auto" also accepts "auto" whatever its kind. `low`/`high`: inclusive bounds of a number;
    kind "file": a path that must exist (empty = none given)."""

    name: str
    kind: str  # one of KINDS
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None

    def parse(self, text: str) -> Any:
        if text == AUTO and self.default == AUTO:
            return AUTO
        try:
            if self.kind == "int":
                value = int(text)
            elif self.kind == "float":
                value = float(text)
            elif self.kind == "bool":
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("1", "true", "yes")
            elif self.kind == "ints":
                value = tuple(int(x) for x in text.split(",") if x.strip())
            else:
                value = text
        except ValueError:
            raise MethodError(f"{self.name}: {text!r} is not a valid {self.kind}") from None
        return value

    def check(self, value: Any) -> None:
        """A parsed (or given) value against the option's choices, bounds and kind."""
        if value == AUTO and self.default == AUTO:
            return
        if self.choices is not None and value not in self.choices:
            raise MethodError(f"{self.name}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise MethodError(f"{self.name}: {value} is not in [{self.low:g}, {self.high:g}]")
        if self.low is not None and value < self.low:
            raise MethodError(f"{self.name}: {value} must be at least {self.low:g}")
        if self.kind == "file" and value and not Path(value).is_file():
            raise MethodError(f"{self.name}: no such file {value}")


class Options(dict):
    """A method's option values, resolved and checked (what `resolve` returns); `given`: the
    names set explicitly (the others hold their defaults)."""

    given: frozenset = frozenset()


def resolve(method: str, options: tuple[Option, ...], values: dict[str, Any],
            validate: Callable[[Options], None] = lambda _: None) -> Options:
    """Typed, checked values of every option (defaults for those not given); `validate` then
    checks rules between options. Already resolved values are returned as they are."""
    if isinstance(values, Options):
        return values
    known = {o.name: o for o in options}
    unknown = set(values) - set(known)
    if unknown:
        valid = ", ".join(known) or "(none)"
        raise MethodError(f"{method}: unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    out = Options({o.name: o.default for o in options})
    out.given = frozenset(values)
    for key, value in values.items():
        try:
            out[key] = known[key].parse(value) if isinstance(value, str) else value
            known[key].check(out[key])
        except MethodError as err:
            raise MethodError(f"{method}.{err}") from None  # e.g. "lookahead.window: 'x' is not a valid int"
    validate(out)
    return out
