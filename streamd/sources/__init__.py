"""
The source kinds a stream table may name: every entry point of the C{streamd.sources}
group of the installed packages, streamd's own kinds included.

An entry point's name is the kind (C{source = "NAME"}); its object provides
L{streamd.interfaces.ISourceKind} (usually the source class). A package adds a kind
with, in its C{pyproject.toml}::

    [project.entry-points."streamd.sources"]
    spool = "streamd_spool:SpoolSource"

Only the names are read at start-up (from the installed packages' metadata); a kind's
module is imported when a stream table names it, so a kind whose package cannot be
imported costs nothing until it is used, and then stops start-up with one line.
Reading the settings imports no kind (L{streamd.config} keeps a kind's own keys as
written): the kind checks them when the service is built (L{stream_table}, through
L{make_source}), and C{twistd streamd} has every declared stream checked before it
starts (L{check_streams}), so a bad key still stops start-up with one line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from streamd.keys import ConfigError, Key, frozen

if TYPE_CHECKING:
    from streamd.config import Settings, StreamSettings

GROUP = "streamd.sources"


class KindError(LookupError):
    """A kind that cannot be used; C{str()} is one line for the operator."""


@dataclass
class Services:
    """What a source may use: injected, never imported as globals."""

    reactor: Any
    settings: Settings  # the whole service's (a stream's own table is from_config's)
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. named Redis connections
    metrics: Any = None  # streamd.metrics.Metrics: sources count errors, reconnects, requests
    # A worker's link to its parent (streamd.workers.remote.BrokerClient): memory streams
    # live there. None in one process.
    broker: Any = None
    worker: int | None = None  # a worker's index (0, 1, ...), for per-worker names


#: Kinds registered in this process (tests, embedding): name -> kind object.
_registered: dict[str, Any] = {}
_loaded: dict[str, Any] = {}


def register(name: str, kind: Any) -> None:
    """Add a kind without installing a package (tests, embedding); wins over one installed."""
    _registered[name] = kind
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    _registered.pop(name, None)
    _loaded.pop(name, None)


@cache
def _entry_points() -> dict[str, list[EntryPoint]]:
    # Read once per process: packages installed later are seen after a restart.
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _package(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def installed() -> dict[str, str]:
    """Every kind by name, with the package (and version) that provides it, sorted."""
    out = {name: ", ".join(_package(ep) for ep in eps)
           for name, eps in _entry_points().items()}
    out.update({name: "registered in process" for name in _registered})
    return dict(sorted(out.items()))


def load(name: str) -> Any:
    """The kind object named C{name}; L{KindError} if unknown or unusable."""
    kind = _loaded.get(name)
    if kind is not None:
        return kind
    if name in _registered:
        kind = _registered[name]
    else:
        eps = _entry_points().get(name)
        if not eps:
            raise KindError(f"unknown source {name!r} (installed: {', '.join(installed())})")
        if len(eps) > 1:
            raise KindError(f"source {name!r} is provided by several packages "
                            f"({', '.join(_package(ep) for ep in eps)}): uninstall one")
        ep = eps[0]
        try:
            kind = ep.load()
        except ImportError as e:
            extra = f" (pip install '{ep.dist.name}[{','.join(ep.extras)}]')" if (
                ep.extras and ep.dist is not None) else ""
            raise KindError(f"source {name!r} cannot be loaded from {ep.value}: "
                            f"{e}{extra}") from None
    for attr in ("config_keys", "from_config"):
        if not hasattr(kind, attr):
            raise KindError(f"source {name!r}: {kind!r} has no {attr} (see "
                            "streamd.interfaces.ISourceKind)")
    _loaded[name] = kind
    return kind


def stream_table(stream: StreamSettings) -> Mapping[str, Any]:
    """
    The whole stream table as C{stream}'s kind checks it (importing the kind): the
    checked stream-level part (L{StreamSettings.table}) and the kind's own keys
    (L{StreamSettings.options}), each checked against the kind's C{config_keys},
    defaults filled in, read-only (a list's value a tuple); then the kind's
    C{check_config}, if it has one. Raises L{ConfigError} naming the key
    (C{streams.NAME.KEY: problem}, or C{streams.NAME.source} for a kind that cannot
    be used).
    """
    where = f"streams.{stream.name}"
    try:
        kind = load(stream.source)
    except KindError as e:
        raise ConfigError(f"{where}.source", str(e)) from None
    kind_keys: list[Key] = list(kind.config_keys)
    known = {k.name: k for k in kind_keys}
    values = {k.name: k.default for k in kind_keys}
    for key, value in stream.options.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}", f"unknown key for a {stream.source} stream")
        values[key] = known[key].validate(value, f"{where}.{key}")
    for k in kind_keys:
        if values[k.name] is None and k.default is None and k.check is not None:
            problem = k.check(None)  # a required key says so in its check
            if problem:
                raise ConfigError(f"{where}.{k.name}", problem)
    table = MappingProxyType({**stream.table, **{k: frozen(v) for k, v in values.items()}})
    check = getattr(kind, "check_config", None)
    if check is not None:
        check(table, where)
    return table


def check_streams(settings: Settings) -> None:
    """
    Have every declared stream's kind check its table (L{stream_table}): what start-up
    does before anything else, so that a bad stream table stops it with one line.
    """
    for stream in settings.streams.values():
        stream_table(stream)


def make_source(stream: StreamSettings, services: Services):
    """
    Build the source of one stream: its kind's C{from_config} gets its checked table
    (L{stream_table}; a bad one raises L{ConfigError}).
    """
    return load(stream.source).from_config(stream_table(stream), services)
