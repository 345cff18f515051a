"""
Source kinds as plugins: entry points of the C{streamd.sources} group, a kind's own
config keys and checks, C{GET /} listing them, and a plugin package installed with pip
(examples/streamd-spool) serving a stream from a real twistd.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import pytest_twisted
import treq

from streamd import config, sources
from tests.support.daemon import LISTENING, TWISTD, wait_for_line
from tests.support.web import settings, within

ROOT = Path(__file__).resolve().parents[2]
SPOOL = ROOT / "examples" / "streamd-spool"


def _load(name: str):
    # By file, not by putting the directory on sys.path: a pip install of the example
    # leaves an egg-info there, which would make it an installed kind for every test.
    spec = importlib.util.spec_from_file_location(name, SPOOL / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SpoolSource = _load("streamd_spool").SpoolSource
TestSpoolConformance = _load("test_spool").TestSpoolConformance  # the example's own suite

ensure = pytest_twisted.ensureDeferred
BUILT_IN = ["amqp", "memory", "redis-list", "redis-pubsub", "redis-stream", "sqs"]


@pytest.fixture
def spool_kind():
    sources.register("spool", SpoolSource)
    yield
    sources.unregister("spool")


def error(table: dict, **top) -> str:
    """What start-up says of stream table C{table}: its kind checks it once read."""
    with pytest.raises(config.ConfigError) as e:
        sources.check_streams(config.load_settings({"streams": {"x": table}, **top}, {}))
    return str(e.value)


def test_built_in_kinds_register_through_the_entry_point_group():
    kinds = sources.installed()
    assert list(kinds) == sorted(kinds)
    for name in BUILT_IN:
        assert kinds[name].startswith("streamd "), (name, kinds[name])
    for name in BUILT_IN:
        assert name in {ep.name for ep in sources._entry_points()[name]}


def test_an_unknown_source_names_the_installed_ones():
    assert error({"source": "kafka"}) == (
        "streams.x.source: unknown source 'kafka' (installed: "
        + ", ".join(sources.installed()) + ")")
    assert error({"source": 3}) == "streams.x.source: expected a string, got 3"


def test_a_plugin_validates_its_own_table(spool_kind):
    assert error({"source": "spool"}) == "streams.x.directory: required: the spool directory"
    assert error({"source": "spool", "directory": "d", "batch": 0}) == (
        "streams.x.batch: must be at least 1, got 0")
    assert error({"source": "spool", "directory": "d", "nope": 1}) == (
        "streams.x.nope: unknown key for a spool stream")
    # check_config: across keys, after each key (stream-level ones included) is valid.
    assert error({"source": "spool", "directory": "d", "ack": "client", "max_unacked": 5}
                 ) == "streams.x.batch: must not exceed max_unacked"
    s = config.load_settings({"streams": {"x": {"source": "spool", "directory": "d"}}}, {})
    assert sources.stream_table(s.streams["x"])["batch"] == 10
    assert s.streams["x"].heartbeat == 15.0


def test_a_kind_that_cannot_be_imported_is_one_line(monkeypatch):
    broken = EntryPoint(name="broken", value="no_such_module_here:Source [extra]",
                        group=sources.GROUP)
    found = dict(sources._entry_points())
    found["broken"] = [broken]
    monkeypatch.setattr(sources, "_entry_points", lambda: found)
    monkeypatch.setattr(sources, "_loaded", {})  # what earlier tests loaded
    assert error({"source": "broken"}) == (
        "streams.x.source: source 'broken' cannot be loaded from "
        "no_such_module_here:Source [extra]: No module named 'no_such_module_here'")
    found["memory"] = found["memory"] + [broken]
    assert "is provided by several packages" in error({"source": "memory"})


def test_an_object_that_is_no_kind_is_refused(spool_kind):
    sources.register("odd", object())
    try:
        assert error({"source": "odd"}).startswith(
            "streams.x.source: source 'odd': <object object")
    finally:
        sources.unregister("odd")


@ensure
async def test_get_root_lists_installed_kinds(serve, spool_kind, tmp_path):
    server = await serve(settings({"inbox": {"source": "spool", "directory": str(tmp_path)}}))
    info = await (await within(treq.get(server.url + "/"))).json()
    assert set(BUILT_IN) | {"spool"} <= set(info["source_kinds"])
    assert info["source_kinds"]["spool"] == "registered in process"
    inbox = info["sources"]["inbox"]
    assert (inbox["source"], inbox["status"], inbox["reason"]) == ("spool", "ok", None)


def test_a_package_installed_with_pip_adds_a_kind(tmp_path):
    # The example plugin, installed as pip installs any package (into its own directory,
    # so the test venv is left as it was), then found by a real twistd on its path.
    # A copy: building leaves build/ and an egg-info beside the sources.
    src = shutil.copytree(SPOOL, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True, capture_output=True, timeout=120)
    assert list(site.glob("streamd_spool-0.1.0.dist-info"))
    spool = tmp_path / "inbox"
    spool.mkdir()
    (spool / "0001.json").write_text('{"job": 1}')
    (tmp_path / "s.toml").write_text(
        f'[streams.inbox]\nsource = "spool"\ndirectory = "{spool}"\n')
    env = dict(os.environ, PYTHONPATH=str(site))
    log = tmp_path / "streamd.log"
    proc = subprocess.Popen(
        [*TWISTD, "--pidfile=", "-n", "--logfile", str(log), "streamd",
         "--listen", "tcp:0:interface=127.0.0.1", "--config", "s.toml"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{int(wait_for_line(proc, log, LISTENING))}"
        info = json.load(urllib.request.urlopen(base + "/", timeout=10))
        assert info["source_kinds"]["spool"] == "streamd-spool 0.1.0"
        stream = urllib.request.urlopen(base + "/streams/inbox?limit=1", timeout=10)
        line = json.loads(stream.readline())
        assert line == {"id": "0001", "stream": "inbox", "data": {"job": 1}}
        assert stream.read() == b""  # the limit ended the response
        assert not (spool / "0001.json").exists()  # acked after the write: deleted
    finally:
        proc.terminate()
        proc.wait(20)

    # An unknown kind stops start-up with one line naming what is installed, plugin too.
    (tmp_path / "bad.toml").write_text('[streams.x]\nsource = "spol"\n')
    bad = subprocess.run(
        [*TWISTD, "--pidfile=", "-n", "streamd", "--config", "bad.toml"],
        cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == (
        "streamd: config error: streams.x.source: unknown source 'spol' (installed: "
        + ", ".join(sorted({*sources.installed(), "spool"})) + ")")
