"""Helpers of tests that test_sqs_process.py shared."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from twisted.internet.threads import deferToThread

from streamd.testing.sqs import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StreamdProcess:
    """C{twistd -n streamd --config FILE} with this checkout on the path."""

    tls = False

    def __init__(self, tmp_path, config: str, workers: int = 1,
                 tls: tuple[str, str] | None = None) -> None:
        """C{tls}: (key, certificate) files: listen with TLS only (C{ssl:})."""
        self.port = free_port()
        self.workers = workers
        self.tls = tls is not None
        path = tmp_path / f"streamd-{self.port}.toml"
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        if tls is not None:
            listen = f"ssl:{self.port}:interface=127.0.0.1:privateKey={tls[0]}:certKey={tls[1]}"
        path.write_text(f'listen = ["{listen}"]\nworkers = {workers}\n' + config)
        env = dict(os.environ, PYTHONPATH=ROOT, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "streamd", "--config", str(path)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # Its own process group: crash() kills the parent and its workers at once.
            start_new_session=True,
        )
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self.log: list[str] = []
        self._logged = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for raw in self.proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    def wait_log(self, text: str, seconds: float = 20.0) -> bool:
        """Block (at most C{seconds}) until a log line contains C{text}; whether one did."""
        with self._logged:
            return self._logged.wait_for(lambda: any(text in line for line in self.log),
                                         seconds)

    def wait_started(self, seconds: float = 20.0) -> None:
        """Block until streamd listens (at most C{seconds}); kill it and fail if not."""
        if not self.wait_log("streamd listening on", seconds):
            self.proc.kill()
            raise AssertionError("streamd did not start:\n" + "".join(self.log[-20:]))

    async def started(self, seconds: float = 20.0) -> None:
        await deferToThread(self.wait_started, seconds)

    async def exited(self, seconds: float = 20.0) -> int:
        return await deferToThread(self.proc.wait, seconds)

    def crash(self) -> None:
        """SIGKILL to the process and, with workers, to every worker at the same instant."""
        if self.workers > 1:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.crash()
            self.proc.wait(10)
        elif self.workers > 1:  # workers left behind by a parent that died alone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def processes():
    started: list[StreamdProcess] = []
    yield started
    for p in started:
        p.kill()


def stream_config(queue_url: str, endpoint: str, stream: str = "orders", **keys) -> str:
    """The table of a stream on this queue; C{keys} add to or override its keys."""
    table = {"source": "sqs", "queue_url": queue_url, "endpoint_url": endpoint,
             "region": "us-east-1", "wait_time_seconds": 1, **keys}
    lines = [f"[streams.{stream}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
