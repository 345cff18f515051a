"""
The spool source against streamd's conformance suite: run with
C{.venv/bin/pytest examples/streamd-spool} (pytest and pytest-twisted installed).
"""

import pytest
from streamd_spool import SpoolSource
from twisted.internet import reactor

from streamd.testing.conformance import SourceConformance, SourceHarness


class SpoolHarness(SourceHarness):
    in_flight = 0  # reads are synchronous: a paused client is handed nothing more

    def __init__(self, directory) -> None:
        self.directory = directory

    async def make(self) -> SpoolSource:
        # Each call is a new streamd (a restart) on the same directory.
        source = SpoolSource("conformance", str(self.directory), reactor, batch=5,
                             interval=0.01)
        source.start()
        return source


class TestSpoolConformance(SourceConformance):
    @pytest.fixture
    def source_harness(self, tmp_path):
        return SpoolHarness(tmp_path)
