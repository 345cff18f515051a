"""C{twistd streamd --help} and C{--version}: what a newcomer reads first."""

from __future__ import annotations

import re

import pytest
from twisted.copyright import version as twisted_version

from streamd import __version__, config
from streamd.tap import Options


def usage() -> str:
    return " ".join(Options().getUsage(width=1000).split())


def option_help(name: str) -> str:
    """The help text of C{--name}, up to the next option."""
    m = re.search(rf"--{name}=? (.*?)(?= -\w, --| --|$)", usage())
    assert m, name
    return m.group(1)


def test_help_points_to_the_config_tables_and_the_readme():
    text = usage()
    for table in ("--config FILE", "[streams.NAME]", "[redis]", "[auth]", "[store]",
                  "[channels]", "README"):
        assert table in text, table


@pytest.mark.parametrize("key", [k for k in config.TOP_KEYS.values()
                                 if k.type == "enum" and k.cli], ids=lambda k: k.name)
def test_every_enum_option_lists_its_values(key):
    shown = option_help(key.name.replace("_", "-"))
    assert f"one of: {', '.join(key.choices)}" in shown, shown


def test_each_option_shows_one_default():
    for key in config.TOP_KEYS.values():
        if key.cli and key.name != "listen":
            shown = option_help(key.name.replace("_", "-"))
            assert shown.count("default") == 1, (key.name, shown)
    assert "only when no [streams] are declared" in option_help("dynamic-streams")
    assert "None" not in option_help("dynamic-streams")


def test_listen_help_names_the_default():
    assert "default tcp:8080:interface=127.0.0.1" in option_help("listen")


def test_version_prints_streamds_and_twisteds(capsys):
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"streamd {__version__}", f"Twisted {twisted_version}"]
