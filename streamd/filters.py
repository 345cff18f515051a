"""
Server-side filters and sampling: pure functions of a message's JSON value, no I/O.

A message passes a L{Filter} when it matches any of the given C{track}, C{follow} and
C{locations} filters (as in the classic streaming APIs), and every C{where} field
(AND across fields, OR within one), and falls inside the C{sample}.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from streamd.errors import InvalidRequest
from streamd.message import Message

if TYPE_CHECKING:  # a type only: the config is a higher layer
    from streamd.config import StreamKeys

_MISSING = object()


def field(value: Any, path: str) -> Any:
    """C{value["a"]["b"]} for C{path} "a.b"; L{_MISSING} when absent."""
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return value
    return value


def sampled(message_id: str, rate: float) -> bool:
    """
    Deterministic by id: every client (and every instance) with the same rate keeps
    the same messages, and a higher rate keeps a superset of a lower one.
    """
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(message_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _point(value: Any) -> tuple[float, float] | tuple[float, float, float, float] | None:
    """A point (lon, lat) or a box (lon1, lat1, lon2, lat2) from common shapes."""
    if isinstance(value, Mapping):
        if "coordinates" in value:  # GeoJSON Point, or bounding box as coordinates
            return _point(value["coordinates"])
        lon = value.get("lon", value.get("lng", value.get("longitude")))
        lat = value.get("lat", value.get("latitude"))
        value = [lon, lat]
    if (
        isinstance(value, list)
        and len(value) in (2, 4)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        # 2 or 4 floats (checked just above), which a tuple() of a generator cannot say
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    return None


class Filter:
    """
    One client's filter, built by L{parse} from request parameters.

    @ivar phrases: each phrase a tuple of lower-case terms, all of which must occur.
    """

    def __init__(
        self,
        *,
        phrases: Iterable[tuple[str, ...]] = (),
        follow: Iterable[str] = frozenset(),
        boxes: Iterable[tuple[float, float, float, float]] = (),
        where: dict[str, set[str]] | None = None,
        sample: float = 1.0,
        text_fields: Iterable[str] = (),
        id_fields: Iterable[str] = (),
        location_field: str | None = None,
    ) -> None:
        self.phrases = list(phrases)
        self.follow = set(follow)
        self.boxes = list(boxes)
        self.where = where or {}
        self.sample = sample
        self.text_fields = list(text_fields)
        self.id_fields = list(id_fields)
        self.location_field = location_field

    @property
    def any_of(self) -> bool:
        return bool(self.phrases or self.follow or self.boxes)

    def __bool__(self) -> bool:
        return self.any_of or bool(self.where) or self.sample < 1.0

    def matches(self, message: Message) -> bool:
        if self.sample < 1.0 and not sampled(message.id, self.sample):
            return False
        if not (self.any_of or self.where):
            return True
        value = message.value()
        for path, wanted in self.where.items():
            got = field(value, path)
            if got is _MISSING or _scalar_text(got) not in wanted:
                return False
        if not self.any_of:
            return True
        return bool(
            (self.phrases and self._track(message, value))
            or (self.follow and self._follow(value))
            or (self.boxes and self._located(value))
        )

    def _track(self, message: Message, value: Any) -> bool:
        if self.text_fields:
            parts = (field(value, p) for p in self.text_fields)
            text = " ".join(_as_text(p) for p in parts if p is not _MISSING).lower()
        else:
            text = message.data.decode("utf-8", "replace").lower()
        return any(all(term in text for term in phrase) for phrase in self.phrases)

    def _follow(self, value: Any) -> bool:
        for path in self.id_fields:
            got = field(value, path)
            items = got if isinstance(got, list) else [got]
            if any(_scalar_text(i) in self.follow for i in items if i is not _MISSING):
                return True
        return False

    def _located(self, value: Any) -> bool:
        if self.location_field is None:
            return False
        where = _point(field(value, self.location_field))
        if where is None:
            return False
        if len(where) == 2:
            lon, lat = where
            return any(b[0] <= lon <= b[2] and b[1] <= lat <= b[3] for b in self.boxes)
        w, s, e, n = where  # a box matches a box it overlaps
        return any(not (e < b[0] or w > b[2] or n < b[1] or s > b[3]) for b in self.boxes)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def _split(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def params_from_json(value: Any) -> dict[str, list[str]]:
    """
    Filters given as a JSON object (C{POST /streams/NAME/filter}) as the request
    parameters L{parse} reads: a list joins with commas, as in a URL, and C{where}
    maps each field to its values (C{where.FIELD}). Raises L{InvalidRequest} naming the key.
    """
    if not isinstance(value, dict):
        raise InvalidRequest("body: expected a JSON object of filters")
    out: dict[str, list[str]] = {}

    def text(key: str, v, lists: bool = True) -> str:
        if lists and isinstance(v, list):
            return ",".join(text(key, i, False) for i in v)
        if isinstance(v, str):
            return v
        if isinstance(v, (bool, int, float)):
            return json.dumps(v)
        # An object or null has no meaning as a filter value: refuse, don't guess.
        raise InvalidRequest(f"{key}: expected a string, number or boolean, or a list of them")

    for key, v in value.items():
        if key == "where":
            if not isinstance(v, dict):
                raise InvalidRequest('where: expected {"FIELD": [values]}')
            for f, vals in v.items():
                vals = vals if isinstance(vals, list) else [vals]
                out[f"where.{f}"] = [text(f"where.{f}", x, False) for x in vals]
        else:
            out[key] = [text(key, v)]
    return out


def parse(params: Mapping[str, list[str]], settings: StreamKeys,
          sample_default: float | None = None) -> Filter:
    """
    Build a L{Filter} from request parameters (name -> list of string values), as
    limited and described by the stream's settings. Raises L{InvalidRequest} naming the
    parameter.
    """
    phrases = [tuple(p.lower().split()) for p in _split(params.get("track", []))]
    if len(phrases) > settings.max_track:
        raise InvalidRequest(f"track: at most {settings.max_track} phrases")
    follow = set(_split(params.get("follow", [])))
    if len(follow) > settings.max_follow:
        raise InvalidRequest(f"follow: at most {settings.max_follow} ids")
    if follow and not settings.id_fields:
        raise InvalidRequest("follow: this stream declares no id_fields to match")
    boxes = _boxes(_split(params.get("locations", [])), settings.max_locations)
    if boxes and not settings.location_field:
        raise InvalidRequest("locations: this stream declares no location_field to match")
    where: dict[str, set[str]] = {}
    declared = settings.fields
    for name, values in params.items():
        if not name.startswith("where."):
            continue
        path = name[len("where."):]
        if not path:
            raise InvalidRequest("where: name a field, as where.FIELD=VALUE")
        if declared and path not in declared:
            raise InvalidRequest(f"{name}: unknown field (fields: {', '.join(declared)})")
        where.setdefault(path, set()).update(values)
    sample = 1.0
    raw = params.get("sample")
    if raw:
        try:
            sample = float(raw[-1])
        except ValueError:
            raise InvalidRequest(f"sample: expected a rate, got {raw[-1]!r}") from None
        if not 0 < sample <= 1:
            raise InvalidRequest(f"sample: must be more than 0 and at most 1, got {raw[-1]}")
    elif sample_default is not None:
        sample = sample_default
    return Filter(
        phrases=phrases, follow=follow, boxes=boxes, where=where, sample=sample,
        text_fields=settings.text_fields, id_fields=settings.id_fields,
        location_field=settings.location_field or None,
    )


def _boxes(numbers: list[str], limit: int) -> list[tuple[float, float, float, float]]:
    if not numbers:
        return []
    if len(numbers) % 4:
        raise InvalidRequest(
            "locations: expected boxes of four numbers lon1,lat1,lon2,lat2 "
            f"(got {len(numbers)} numbers)"
        )
    try:
        vals = [float(n) for n in numbers]
    except ValueError:
        raise InvalidRequest("locations: expected numbers") from None
    boxes = []
    for i in range(0, len(vals), 4):
        w, s, e, n = vals[i:i + 4]
        if not all(math.isfinite(v) for v in (w, s, e, n)):
            raise InvalidRequest("locations: expected finite numbers")
        if not (-180 <= w <= 180 and -180 <= e <= 180):
            raise InvalidRequest(f"locations: longitude must be within -180..180, got {w}, {e}")
        if not (-90 <= s <= 90 and -90 <= n <= 90):
            raise InvalidRequest(f"locations: latitude must be within -90..90, got {s}, {n}")
        if w > e or s > n:
            raise InvalidRequest("locations: a box is south-west corner, then north-east corner")
        boxes.append((w, s, e, n))
    if len(boxes) > limit:
        raise InvalidRequest(f"locations: at most {limit} boxes")
    return boxes
