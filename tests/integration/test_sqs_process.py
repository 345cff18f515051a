"""
streamd as its own process (C{twistd -n streamd --config FILE}) against moto: what
SIGKILL and SIGTERM do to messages in hand. Waits are on log lines, process exits
and stream contents, each with a bound.
"""

from __future__ import annotations

import json
import signal

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.support.process import StreamdProcess, processes, stream_config  # noqa: F401
from tests.support.sqs_server import moto  # noqa: F401  (fixture)
from tests.support.web import open_stream, within

ensure = pytest_twisted.ensureDeferred








@ensure
async def test_sigkill_mid_stream_every_undeleted_message_comes_back(
        tmp_path, moto, processes):  # noqa: F811
    queue = moto.create_queue()
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(20)])
    first = StreamdProcess(tmp_path, stream_config(
        queue, moto.endpoint, visibility_timeout=2, ack="client", max_unacked=5))
    processes.append(first)
    await first.started()
    reader = await open_stream(first.url + "/streams/orders")
    await reader.wait_for(5)
    in_hand = {m["id"] for m in reader.messages()}
    assert moto.counts(queue)[1] >= 5  # received, not acknowledged, not deleted

    first.proc.send_signal(signal.SIGKILL)
    assert await first.exited() == -signal.SIGKILL
    reader.done.addErrback(lambda _: None)

    second = StreamdProcess(tmp_path, stream_config(queue, moto.endpoint))
    processes.append(second)
    await second.started()
    again = await open_stream(second.url + "/streams/orders")
    # The killed streamd's messages come back once their 2 s visibility timeout ends.
    await again.wait_for(20, seconds=20)
    got = {m["id"]: m for m in again.messages()}
    assert sorted(got) == sorted(sent)
    assert all(got[i]["attributes"]["ApproximateReceiveCount"] >= 2 for i in in_hand)
    again.close()


@ensure
async def test_sigterm_gives_back_messages_in_hand_at_once(tmp_path, moto, processes):  # noqa: F811
    queue = moto.create_queue()
    moto.send(queue, [json.dumps({"i": i}) for i in range(20)])
    streamd = StreamdProcess(tmp_path, stream_config(
        queue, moto.endpoint, visibility_timeout=120, ack="client", max_unacked=5,
        max_messages=5))
    processes.append(streamd)
    await streamd.started()
    reader = await open_stream(streamd.url + "/streams/orders")
    await reader.wait_for(5)
    assert moto.counts(queue) == (15, 5)

    streamd.proc.send_signal(signal.SIGTERM)
    # twistd shuts down cleanly, then exits by the signal it was sent (Twisted re-raises
    # it so a supervisor sees why it stopped).
    assert await streamd.exited() in (0, -signal.SIGTERM)
    assert any("Server Shut Down." in line for line in streamd.log)
    await within(reader.done)  # the response ended cleanly (terminating chunk)
    assert reader.items[-1] == {"shutdown": True}
    # Visible again now, not after the 120 s visibility timeout.
    assert moto.counts(queue) == (20, 0)


@ensure
async def test_sigterm_waits_for_receives_in_flight_and_gives_back_what_they_bring(
        tmp_path, moto, processes):  # noqa: F811
    """
    Two long polls wait on an empty queue when SIGTERM comes; 20 messages are sent
    after it. SQS (and moto) go on with a long poll whose caller hung up, so cancelling
    the polls left those messages hidden for the visibility timeout (issue 11). Now
    the polls end within shutdown_timeout and their messages are visible at once.
    """
    queue = moto.create_queue()
    streamd = StreamdProcess(tmp_path, "shutdown_timeout = 5\n" + stream_config(
        queue, moto.endpoint, wait_time_seconds=20, pollers=2, visibility_timeout=120))
    processes.append(streamd)
    await streamd.started()
    reader = await open_stream(streamd.url + "/streams/orders")
    moto.send(queue, ["warm-up"])
    await reader.wait_for(1)  # the pollers poll

    streamd.proc.send_signal(signal.SIGTERM)
    assert await deferToThread(streamd.wait_log, "Received SIGTERM")
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(20)])
    # Promptly: the long polls (20 s) are cut short, not waited out.
    assert await streamd.exited(5) in (0, -signal.SIGTERM)
    assert moto.counts(queue) == (20, 0)
    assert sorted(m["MessageId"] for m in moto.receive_all(queue, 20)) == sorted(sent)


@ensure
async def test_sigterm_under_load_leaves_no_message_hidden(tmp_path, moto, processes):  # noqa: F811
    """
    SIGTERM while two pollers receive as fast as a client reads: every message was
    either read by the client or is visible again, none hidden, none twice.
    """
    queue = moto.create_queue()
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(100)])
    streamd = StreamdProcess(tmp_path, stream_config(
        queue, moto.endpoint, pollers=2, visibility_timeout=120))
    processes.append(streamd)
    await streamd.started()
    reader = await open_stream(streamd.url + "/streams/orders")
    await reader.wait_for(20)

    streamd.proc.send_signal(signal.SIGTERM)
    assert await streamd.exited() in (0, -signal.SIGTERM)
    await within(reader.done)
    read = [m["id"] for m in reader.messages()]
    assert len(set(read)) == len(read), "a message was written twice"
    visible, hidden = moto.counts(queue)
    assert hidden == 0, f"{hidden} messages hidden after SIGTERM ({visible} visible)"
    rest = [m["MessageId"] for m in moto.receive_all(queue, visible)]
    assert sorted(read + rest) == sorted(sent)
