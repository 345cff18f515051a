"""What an operator sees: Prometheus metrics, JSON logs, per-stream access lines."""

import json
import signal
import subprocess

import pytest_twisted
import treq

from tests.support.daemon import TWISTD
from tests.support.web import non_reading_client, open_stream, publish, settings, within

ensure = pytest_twisted.ensureDeferred


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one series in Prometheus text format."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


@ensure
async def test_metrics_count_streams_messages_bytes_pauses_and_policy(serve):
    server = await serve(settings({"news": {"max_pending": 5}}, dynamic_streams=True))
    reader = await open_stream(server.url + "/streams/news")
    other = await open_stream(server.url + "/streams/anything-else")  # a dynamic stream
    await server.wait_open_streams(2)
    await publish(server.url + "/streams/news/messages", {"a": 1}, {"b": 2})
    await reader.wait_for(2)
    r = await within(treq.get(server.url + "/metrics"))
    assert r.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    text = (await treq.content(r)).decode()
    assert sample(text, "streamd_open_streams", stream="news") == 1
    assert sample(text, "streamd_open_streams", stream="_dynamic") == 1
    assert sample(text, "streamd_messages_in_total", stream="news", source="memory") == 2
    assert sample(text, "streamd_messages_out_total", stream="news", source="memory") == 2
    assert sample(text, "streamd_bytes_out_total", stream="news") > 0
    assert sample(text, "streamd_publish_seconds_count", stream="news") == 1
    # A client that stops reading: pauses, then the slow policy disconnects it.
    # Keep a reference: a transport that neither reads nor writes is otherwise collected.
    slow = await non_reading_client(server, "/streams/news")
    await server.wait_open_streams(3)
    stream = next(s for s in server.app.open_streams if s.written == 0 and s.name == "news")
    while not stream.ended:
        await publish(server.url + "/streams/news/messages", *([{"p": "x" * 4000}] * 5))
    text = (await treq.content(await treq.get(server.url + "/metrics"))).decode()
    assert sample(text, "streamd_pauses_total", stream="news") >= 1
    assert sample(text, "streamd_slow_policy_actions_total", stream="news",
                  action="disconnect") == 1
    assert slow.transport.connected
    reader.close()
    other.close()


def test_json_logs_with_one_access_line_per_stream_and_no_secrets(tmp_path):
    cfg = tmp_path / "streamd.toml"
    cfg.write_text('[auth]\nmode = "token"\n[[auth.tokens]]\ntoken = "sekrit-token-value"\n'
                   'identity = "alice"\npublish = ["*"]\n')
    proc = subprocess.Popen(
        [*TWISTD, "--pidfile=", "-n", "streamd", "--config", str(cfg), "--log-format", "json",
         "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        lines = []
        port = None
        for raw in proc.stdout:  # bounded: the process is killed below on failure
            lines.append(raw)
            address = json.loads(raw).get("address", "")
            if address.startswith("tcp:127.0.0.1:"):
                port = int(address.rsplit(":", 1)[1])
                break
        assert port, lines
        import urllib.request

        url = f"http://127.0.0.1:{port}/streams/s?limit=1&access_token=sekrit-token-value"
        stream = urllib.request.urlopen(url, timeout=10)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/streams/s/messages", data=b'{"payload": "private"}',
            headers={"Content-Type": "application/json",
                     "Authorization": "Bearer sekrit-token-value"})
        urllib.request.urlopen(req, timeout=10)
        stream.read()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        lines.extend(out.splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line) for line in lines if line.strip()]
    ended = [e for e in events if e["message"].startswith("stream s ended")]
    assert len(ended) == 1
    e = ended[0]
    assert e["message"].startswith("stream s ended (limit): identity=alice duration=")
    assert (e["level"], e["namespace"]) == ("info", "streamd.web.streaming")
    assert e["time"].endswith("Z")
    # Plain JSON lines: no Twisted bookkeeping.
    assert not [k for e in events for k in e if k.startswith("log_")]
    assert (e["stream"], e["identity"], e["reason"], e["messages"]) == ("s", "alice", "limit", 1)
    assert e["bytes"] > 0 and e["duration"] >= 0
    everything = b"\n".join(lines)
    assert b"sekrit-token-value" not in everything
    assert b"private" not in everything
