"""The tests of test_config.py that need other processes (moved from it)."""

import dataclasses

import pytest

from streamd import config
from streamd.auth import AuthSettings, TokenSettings
from streamd.keys import keys_of
from streamd.redis.settings import RedisConnectionSettings
from tests.unit.test_config import HELD_AS  # noqa: F401


@pytest.mark.parametrize("cls", [config.Settings, config.ChannelSettings,
                                 config.StoreSettings, AuthSettings, TokenSettings,
                                 RedisConnectionSettings])
def test_each_key_is_declared_once_as_a_typed_field(cls):
    annotations = {f.name: f.type for f in dataclasses.fields(cls)}
    for key in keys_of(cls):
        assert annotations[key.name] == HELD_AS[key.type], key.name
        # The default is valid (None: required, or decided later).
        assert key.default is None or key.validate(key.default, key.name) == key.default
