"""The [store] table and --data-dir: defaults, and one clear error per bad key."""

from __future__ import annotations

import pytest

from streamd import config
from streamd.tap import Options


def test_defaults_are_sqlite_in_the_data_dir():
    s = config.load_settings({}, {})
    assert s.data_dir == "./streamd-data"
    assert s.store.backend == "sqlite" and s.store.keys == ("kind", "user")
    assert (s.store.max_events, s.store.max_age) == (0, 0)


def test_data_dir_option():
    options = Options()
    options.parseOptions(["--data-dir", "/var/lib/streamd"])
    assert options["settings"].data_dir == "/var/lib/streamd"


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"backend": "postgres"}, "store.backend"),
        ({"keys": ["user", "start"]}, "store.keys"),
        ({"keys": ["a=b"]}, "store.keys"),
        ({"keys": ["user", "user"]}, "store.keys"),
        ({"max_events": -1}, "store.max_events"),
        ({"max_age": "1d"}, "store.max_age"),
        ({"colour": 1}, "store.colour"),
        ({"backend": "redis", "redis_url": "localhost:6379"}, "store.redis_url"),
    ],
)
def test_bad_store_settings_name_the_key(table, named):
    with pytest.raises(config.ConfigError) as e:
        config.load_settings({"store": table}, {})
    assert str(e.value).startswith(f"{named}: ")
