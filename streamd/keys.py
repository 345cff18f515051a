"""
The vocabulary of settings: L{Key} (one setting: its type, default, bounds and check),
L{ConfigError} (one line naming the bad key), L{setting} and L{Table}, which declare a
table's keys as the fields of a frozen dataclass, so that a key and the field that holds
its value are one declaration, and the checks several tables share (L{check_ca}).

Imports nothing of streamd: the modules that declare keys (L{streamd.auth},
L{streamd.redis.settings}, the source kinds) do so without importing
L{streamd.config}, which imports the first two to build the tables in one place. The
source kinds' keys are checked by L{streamd.sources.stream_table} when the service is
built, so that reading settings imports no kind (nor Twisted, treq or pika).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T", bound="Table")


class ConfigError(ValueError):
    """One bad setting; C{str()} is the one line shown to the operator."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclasses.dataclass(frozen=True)
class Key:
    """One setting: its name, type, default and an optional extra check."""

    name: str
    type: str  # "int", "number", "bool", "str", "list", "enum"
    # An enum's values; for an int, words it takes besides numbers ("auto").
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    cli: bool = True
    secret: bool = False  # never echo the value in an error

    def parse_cli(self, text: str) -> Any:
        """Turn a command-line string into this key's type (then L{validate})."""
        if self.type == "int":
            if text in self.choices:  # a word an int key also takes ("auto")
                return text
            try:
                return int(text)
            except ValueError:
                raise ConfigError(self.name, f"expected an integer, got {text!r}") from None
        if self.type == "number":
            try:
                return float(text)
            except ValueError:
                raise ConfigError(self.name, f"expected a number, got {text!r}") from None
        if self.type == "bool":
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(self.name, f"expected true or false, got {text!r}")
        if self.type == "list":
            return [part.strip() for part in text.split(",") if part.strip()]
        return text

    def validate(self, value: Any, where: str) -> Any:
        """Return C{value} checked (and normalised) or raise L{ConfigError}."""
        try:
            return self._validate(value, where)
        except ConfigError as e:
            if self.secret:
                raise ConfigError(where, "invalid value (not shown: it is a secret)") from None
            raise e

    def _validate(self, value: Any, where: str) -> Any:
        t = self.type
        if t == "int" and value in self.choices:
            return value
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(where, f"expected an integer, got {value!r}")
        elif t == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(where, f"expected a number, got {value!r}")
            value = float(value)
        elif t == "bool":
            if not isinstance(value, bool):
                raise ConfigError(where, f"expected true or false, got {value!r}")
        elif t in ("str", "enum"):
            if not isinstance(value, str):
                raise ConfigError(where, f"expected a string, got {value!r}")
            if t == "enum" and value not in self.choices:
                raise ConfigError(
                    where, f"expected one of {', '.join(self.choices)}, got {value!r}"
                )
        elif t == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(where, f"expected a list of strings, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(where, f"must be at least {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(where, f"must be at most {self.maximum:g}, got {value!r}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(where, problem)
        return value


def check_ca(value: str) -> str | None:
    """
    The check of a C{tls_ca} key (Redis, RabbitMQ): empty (the system's CAs), or a
    readable file holding a PEM certificate.
    """
    if value:
        try:
            with open(value, "rb") as f:
                if b"-----BEGIN CERTIFICATE-----" not in f.read():
                    return f"{value} holds no PEM certificate"
        except OSError as e:
            return f"cannot read {value}: {e.strerror}"
    return None


def frozen(value: Any) -> Any:
    """A validated value as a frozen settings object holds it: a list becomes a tuple."""
    return tuple(value) if isinstance(value, list) else value


def setting(type: str, default: Any = None, help: str = "", *, repr: bool = True,
            **options: Any) -> Any:
    """
    A field of a L{Table} dataclass that is also a config key: the field's name is the
    key's name, the rest (C{type}, C{default}, C{help}, and L{Key}'s C{minimum},
    C{maximum}, C{choices}, C{check}, C{cli}, C{secret}) is the key's. The field's
    default is the key's, frozen (a list default is a tuple). A secret is left out of
    the object's C{repr}.
    """
    key = dict(type=type, default=default, help=help, **options)
    return dataclasses.field(default=frozen(default), metadata={"key": key},
                             repr=repr and not options.get("secret", False))


#: L{keys_of}'s answers, by class: a class's fields do not change. A dict rather than
#: C{functools.cache}, whose stub wants a Hashable argument, which mypy does not see a
#: class as (python/mypy#11470).
_KEYS: dict[type, tuple[Key, ...]] = {}


def keys_of(cls: type) -> tuple[Key, ...]:
    """The L{Key}s that C{cls}'s L{setting} fields declare, in field order."""
    keys = _KEYS.get(cls)
    if keys is None:
        keys = _KEYS[cls] = tuple(Key(f.name, **f.metadata["key"])
                                  for f in dataclasses.fields(cls) if "key" in f.metadata)
    return keys


def read_table(keys: Iterable[Key], table: Any, where: str,
               unknown: str = "unknown key") -> dict[str, Any]:
    """
    Validate the TOML table C{where} (a dict) against C{keys}: every key's value,
    defaults filled in, in the keys' order. A key that is not one of C{keys} is
    C{"WHERE.NAME: UNKNOWN"}.
    """
    if not isinstance(table, dict):
        raise ConfigError(where, "expected a table")
    known = {k.name: k for k in keys}
    out = {name: k.default for name, k in known.items()}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"{where}.{name}", unknown)
        out[name] = known[name].validate(value, f"{where}.{name}")
    return out


class Table:
    """
    Base of a frozen dataclass whose L{setting} fields are the keys of one TOML table
    (L{keys_of} lists them); L{from_table} reads one. A table with rules across its
    keys overrides L{from_table}.
    """

    @classmethod
    def from_table(cls: type[T], table: Any, where: str) -> T:
        """The validated table C{where}; L{ConfigError} naming the first bad key."""
        values = read_table(keys_of(cls), table, where)
        return cls(**{name: frozen(v) for name, v in values.items()})
