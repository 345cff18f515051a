"""
The SQS source's delivery rules, on a Clock with an in-memory queue (streamd.testing.sqs):
demand-driven polling, delete only after ack, give back on nack/cancel/stop, visibility
extension, queue vs broadcast delivery, down/up, envelope and publish.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from streamd import config, sources
from streamd.errors import InvalidRequest, SourceDown
from streamd.framing import NDJSON
from streamd.message import body_json
from streamd.sources.sqs import PROBE_FIRST, STOP_MARGIN, SQSSource
from streamd.sources.sqs_delivery import SKIP_DELAY
from streamd.sources.sqs_held import ACK_LINGER, LINGER
from streamd.sources.sqs_polling import EMPTY_PAUSE, REST
from streamd.sqs.aws import SQSError
from streamd.stream import Stream
from streamd.testing import FakeRequest, Recorder
from streamd.testing.sqs import FakeSQS, fired

QURL = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"


def make(shutdown_timeout=None, **keys):
    table = {"source": "sqs", "queue_url": QURL, **keys}
    settings = sources.stream_table(
        config.load_settings({"streams": {"orders": table}}, {}).streams["orders"])
    fake, clock = FakeSQS(), Clock()
    source = SQSSource("orders", settings, fake, clock, shutdown_timeout=shutdown_timeout)
    source.start()
    return source, fake, clock


def attach(source, n=1):
    out = []
    for _ in range(n):
        r = Recorder()
        r.attach(source)
        out.append(r)
    return out if n > 1 else out[0]


def test_config_errors_name_the_key():
    for table, problem in [
        ({}, "streams.q.queue_url: required"),
        ({"queue_url": QURL, "max_messages": 11}, "streams.q.max_messages: must be at most 10"),
        ({"queue_url": QURL, "wait_time_seconds": 21}, "streams.q.wait_time_seconds"),
        ({"queue_url": QURL, "delivery": "all"}, "streams.q.delivery"),
        ({"queue_url": "sqs://x"}, "streams.q.queue_url: expected an http"),
    ]:
        with pytest.raises(config.ConfigError) as e:
            sources.check_streams(
                config.load_settings({"streams": {"q": {"source": "sqs", **table}}}, {}))
        assert str(e.value).startswith(problem)


def test_no_receive_without_a_client_then_one_long_poll():
    source, fake, clock = make()
    assert fake.calls["ReceiveMessage"] == 0
    attach(source)
    assert fake.calls["ReceiveMessage"] == 1
    clock.advance(60)  # a pending long poll: nothing more is asked
    assert fake.calls["ReceiveMessage"] == 1


def test_empty_queue_without_long_polling_does_not_spin():
    source, fake, clock = make(wait_time_seconds=0)
    attach(source)
    assert fake.calls["ReceiveMessage"] == 1
    clock.advance(EMPTY_PAUSE)
    assert fake.calls["ReceiveMessage"] == 2


def test_paused_client_stops_polling_and_holds_one_batch():
    source, fake, clock = make(max_messages=2)
    r = attach(source)
    fake.put("1", "2")
    assert r.ids() == ["m1", "m2"]
    r.subscription.pause()
    fake.put("3", "4", "5")  # answers the poll already in flight: that batch is held
    polls = fake.calls["ReceiveMessage"]
    clock.advance(100)
    assert r.ids() == ["m1", "m2"] and fake.calls["ReceiveMessage"] == polls
    assert fake.counts() == (1, 4)  # one batch held, the rest still in SQS
    r.subscription.resume()
    assert r.ids() == ["m1", "m2", "m3", "m4", "m5"]


def test_delete_only_after_ack_and_nack_makes_visible_at_once():
    source, fake, clock = make()
    r = attach(source)
    fake.put("1", "2", "3")
    clock.advance(ACK_LINGER)
    assert fake.deleted == []
    r.subscription.pause()
    r.subscription.ack(r.messages[:2])
    r.subscription.nack(r.messages[2:])
    assert fake.deleted == []  # batched to the end of this reactor turn
    clock.advance(ACK_LINGER)
    assert fake.deleted == ["m1", "m2"] and fake.released == ["m3"]
    assert fake.calls["DeleteMessageBatch"] == 1
    r.subscription.resume()
    assert r.ids()[-1] == "m3"  # redelivered
    assert r.messages[-1].attributes["ApproximateReceiveCount"] == 2


def test_queue_delivery_gives_each_batch_to_one_ready_client():
    source, fake, clock = make(max_messages=1)
    a, b = attach(source, 2)
    b.subscription.pause()
    fake.put("1", "2", "3")
    assert a.ids() == ["m1", "m2", "m3"] and b.ids() == []
    b.subscription.resume()
    fake.put("4", "5", "6", "7")
    assert sorted(a.ids() + b.ids()) == ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
    assert b.ids() and len(set(a.ids()) & set(b.ids())) == 0


def test_broadcast_deletes_when_every_client_is_done_and_one_wrote_it():
    source, fake, clock = make(delivery="broadcast")
    a, b = attach(source, 2)
    fake.put("1", "2")
    assert a.ids() == b.ids() == ["m1", "m2"]
    assert a.messages[0] is b.messages[0]  # one Message: encoded once for both
    a.subscription.ack(a.messages)
    clock.advance(ACK_LINGER)
    assert fake.deleted == []
    b.subscription.nack(b.messages[:1])
    b.subscription.ack(b.messages[1:])
    clock.advance(ACK_LINGER)
    assert sorted(fake.deleted) == ["m1", "m2"] and fake.released == []


def test_broadcast_nacked_by_all_is_given_back():
    source, fake, clock = make(delivery="broadcast")
    a, b = attach(source, 2)
    a.subscription.pause()
    b.subscription.pause()
    fake.put("1")  # the poll was in flight: delivered to... nobody ready, held
    assert a.ids() == []
    a.subscription.resume()
    assert a.ids() == b.ids() == ["m1"]  # broadcast: paused clients get it queued too
    a.subscription.nack(a.messages)
    b.subscription.cancel()  # gone without settling: given back once it is no use waiting
    clock.advance(LINGER)
    assert fake.released == ["m1"] and fake.deleted == []


def test_cancel_waits_for_late_acks_then_gives_back_what_was_not_settled():
    source, fake, clock = make(visibility_timeout=20)
    r = attach(source)
    fake.put("1", "2", "3", "4")
    r.subscription.ack(r.messages[:1])
    r.subscription.cancel()
    clock.advance(ACK_LINGER)
    assert fake.deleted == ["m1"] and fake.released == []  # m2-m4 wait for their acks
    clock.advance(15)
    assert ("m2", 20) in fake.extended  # still held: kept hidden, its handle valid
    # The stream's bytes left the process after cancel(): the ack deletes.
    r.subscription.ack(r.messages[1:2])
    r.subscription.nack(r.messages[2:3])  # a nack after cancel gives back at once
    clock.advance(ACK_LINGER)
    # (m3 is received again by the poll in flight, which has no client for it.)
    assert fake.deleted == ["m1", "m2"] and set(fake.released) == {"m3"}
    clock.advance(LINGER - 0.1 - clock.seconds())  # LINGER after cancel(), nearly
    assert set(fake.released) == {"m3"}
    clock.advance(0.2)  # no ack for m4 within LINGER: given back
    assert set(fake.released) == {"m3", "m4"} and fake.counts() == (2, 0)
    r.subscription.ack(r.messages[3:])  # too late (given back): ignored
    r.subscription.ack(r.messages[1:2])  # settled twice: ignored
    clock.advance(LINGER)
    assert fake.deleted == ["m1", "m2"] and fake.calls["DeleteMessageBatch"] == 2


def test_a_client_gone_that_settles_everything_is_not_waited_for():
    source, fake, clock = make()
    r = attach(source)
    fake.put("1", "2")
    r.subscription.pause()
    r.subscription.cancel()
    timers = len(clock.getDelayedCalls())
    r.subscription.ack(r.messages)
    clock.advance(ACK_LINGER)
    assert fake.deleted == ["m1", "m2"]
    assert len(clock.getDelayedCalls()) == timers - 1  # the LINGER timer went with them


def test_stop_gives_back_at_once_what_a_client_gone_has_not_settled():
    source, fake, clock = make()
    r = attach(source)
    fake.put("1", "2")
    r.subscription.pause()
    r.subscription.cancel()
    d = source.stop()
    clock.advance(ACK_LINGER)
    assert d.called and set(fake.released) == {"m1", "m2"} and fake.counts() == (2, 0)
    assert not [c for c in clock.getDelayedCalls() if c.getTime() >= LINGER]


def test_broadcast_late_ack_of_a_client_gone_completes_the_delete():
    source, fake, clock = make(delivery="broadcast")
    a, b = attach(source, 2)
    fake.put("1")
    a.subscription.ack(a.messages)
    b.subscription.cancel()
    clock.advance(ACK_LINGER)
    assert fake.deleted == [] and fake.released == []  # waiting for b
    b.subscription.ack(b.messages)
    clock.advance(ACK_LINGER)
    assert fake.deleted == ["m1"]


def test_last_client_gone_a_batch_that_finds_no_client_goes_straight_back():
    source, fake, clock = make()
    r = attach(source)
    fake.put("1")
    r.subscription.ack(r.messages)
    r.subscription.cancel()
    # The poll in flight when the last client left gets m2: no client, straight back.
    fake.put("2")
    clock.advance(ACK_LINGER)
    assert fake.deleted == ["m1"] and fake.released == ["m2"]
    assert fake.counts() == (1, 0)
    assert fake.calls["ReceiveMessage"] == 2  # and no client: no further polls


def test_visibility_extended_for_messages_held_past_half_the_timeout():
    source, fake, clock = make(visibility_timeout=20)
    r = attach(source)
    fake.put("1", "2")
    r.subscription.ack(r.messages[:1])
    clock.advance(ACK_LINGER)
    clock.advance(5)
    assert fake.extended == []
    clock.advance(5)  # 10 s = half the timeout
    assert fake.extended == [("m2", 20)]
    clock.advance(5)
    assert fake.extended == [("m2", 20)]  # extended 5 s ago: not yet again
    clock.advance(5)
    assert fake.extended == [("m2", 20), ("m2", 20)]


def test_stop_ends_streams_and_gives_back_everything_not_written():
    source, fake, clock = make(max_messages=2)
    a, b = attach(source, 2)
    fake.put("1", "2")  # to one client
    held = a if a.messages else b
    held.subscription.ack(held.messages[:1])
    for r in (a, b):
        r.subscription.pause()
    fake.put("3", "4")  # answers the poll in flight: held for a client
    d = source.stop()
    clock.advance(ACK_LINGER)
    assert d.called
    assert a.ended == b.ended == "shutdown"
    assert fake.deleted == ["m1"]
    assert sorted(fake.released) == ["m2", "m3", "m4"]
    assert fake.counts() == (3, 0)


def test_stop_lets_a_receive_in_flight_finish_and_gives_back_what_it_brings():
    source, fake, clock = make(shutdown_timeout=10)
    r = attach(source)
    d = source.stop()
    assert r.ended == "shutdown" and not d.called  # the long poll is still out
    fake.put("1", "2")  # and answers during the shutdown
    clock.advance(0)
    assert d.called
    assert r.messages == [] and sorted(fake.released) == ["m1", "m2"]
    assert fake.calls["ReceiveMessage"] == 1 and fake.counts() == (2, 0)  # no more polls


def test_stop_cancels_a_receive_still_in_flight_after_its_grace():
    source, fake, clock = make(shutdown_timeout=4)
    attach(source)
    d = source.stop()
    clock.advance(4 - STOP_MARGIN - 0.01)
    assert not d.called and len(fake.polls) == 1
    clock.advance(0.01)
    assert d.called and fake.polls == []


def test_stop_does_not_rest_after_a_receive_that_failed_during_it():
    source, fake, clock = make(shutdown_timeout=10)
    attach(source)
    d = source.stop()
    poll, _ = fake.polls.pop()
    poll.errback(SQSError("InternalError", "", 500))  # through all the client's retries
    assert d.called  # not after REST


@pytest.mark.parametrize(("shutdown_timeout", "wait_time_seconds", "wait"), [
    (None, 20, 20),  # no shutdown to fit in (a source built by hand)
    (10, 20, 9),     # the defaults: a poll ends before the shutdown gives up on it
    (30, 20, 20),
    (1.5, 20, 1),    # never below 1 s (that would be short polling)
    (10, 0, 0),
])
def test_long_polls_end_within_the_shutdown_timeout(shutdown_timeout, wait_time_seconds, wait):
    source, fake, clock = make(shutdown_timeout, wait_time_seconds=wait_time_seconds)
    attach(source)
    assert fake.waits[0] == wait


def test_source_down_for_a_missing_queue_then_up_again():
    source, fake, clock = make()
    r = attach(source)
    fake.error = SQSError("QueueDoesNotExist", "The specified queue does not exist.", 400)
    fake.put("1")  # served to the pending poll before the error: fine
    fake.put("2")
    r.subscription.ack(r.messages)
    # the next poll fails: down
    assert source.status() == ("down", "QueueDoesNotExist: The specified queue does not exist.")
    with pytest.raises(SourceDown):
        source.subscribe(Recorder())
    polls = fake.calls["ReceiveMessage"]
    clock.advance(PROBE_FIRST)
    assert source.status()[0] == "down" and fake.calls["ReceiveMessage"] == polls
    fake.error = None
    clock.advance(PROBE_FIRST * 2)
    assert source.status() == ("ok", None)
    assert r.ids() == ["m1", "m2"]  # polling resumed for the client still connected


def test_envelope_json_or_string_and_attributes():
    assert body_json('{"a": 1}') == b'{"a": 1}'
    assert body_json("plain text") == b'"plain text"'
    assert body_json("007") == b'"007"'  # not valid JSON (leading zero): a string
    assert body_json("[1,\n2]") == b"[1,2]"  # one line, whatever the sender did
    source, fake, clock = make()
    r = attach(source)
    fake.put("hello", MessageAttributes={"kind": {"DataType": "String", "StringValue": "x"},
                                         "raw": {"DataType": "Binary", "BinaryValue": b"\x00"}})
    m = r.messages[0]
    assert json.loads(m.data) == "hello"
    assert m.attributes == {"kind": "x", "raw": "AA==", "ApproximateReceiveCount": 1,
                            "SentTimestamp": 1000}


def test_limit_on_a_real_stream_takes_exactly_n_and_gives_back_the_rest():
    source, fake, clock = make()
    request = FakeRequest()
    stream = Stream(request, source, NDJSON, clock, limit=3, heartbeat=0)
    stream.start()
    fake.put(*[json.dumps({"n": i}) for i in range(10)])
    clock.advance(ACK_LINGER)
    assert len(request.lines()) == 3 and stream.ended
    assert sorted(fake.deleted) == ["m1", "m2", "m3"]
    assert fake.counts() == (7, 0)


def test_since_is_refused():
    source, fake, clock = make()
    with pytest.raises(InvalidRequest):
        source.subscribe(Recorder(), since="m1")


def test_publish_in_batches_with_fifo_ids():
    source, fake, clock = make(queue_url=QURL + ".fifo")
    with pytest.raises(InvalidRequest):
        fired(source.publish([b"{}"], {}))
    ids = fired(source.publish([b'{"n":%d}' % i for i in range(3)],
                                 {"group_id": "g", "deduplication_id": "d"}))
    assert ids == ["m1", "m2", "m3"]
    assert [e["MessageDeduplicationId"] for e in fake.sent] == ["d-0", "d-1", "d-2"]
    assert {e["MessageGroupId"] for e in fake.sent} == {"g"}



def test_filtered_out_in_queue_delivery_goes_to_another_client_then_waits():
    source, fake, clock = make(max_messages=2)
    a, b = attach(source, 2)
    fake.put("1", "2")
    first, second = (a, b) if a.messages else (b, a)
    first.subscription.skip(first.messages[:1])  # its filter does not want m1
    assert second.ids() == ["m1"]
    second.subscription.skip(second.messages)  # nobody connected wants it
    clock.advance(ACK_LINGER)
    # Hidden for a while instead of bouncing between SQS and streamd in a loop.
    assert fake.extended == [("m1", SKIP_DELAY)] and fake.released == []
    assert "m1" not in {m.message.id for m in source.held.entries.values()}


def test_filtered_out_in_broadcast_counts_as_handled():
    source, fake, clock = make(delivery="broadcast")
    a, b = attach(source, 2)
    fake.put("1", "2")
    a.subscription.skip(a.messages)
    b.subscription.ack(b.messages[:1])
    b.subscription.skip(b.messages[1:])
    clock.advance(ACK_LINGER)
    assert sorted(fake.deleted) == ["m1", "m2"] and fake.released == []


def test_partial_delete_batches_linger_full_ones_go_at_once():
    source, fake, clock = make()
    r = attach(source)
    fake.put(*"0123456789abc")
    r.subscription.pause()
    r.subscription.ack(r.messages[:3])
    clock.advance(0)
    assert fake.deleted == []  # waiting a moment for more acks
    r.subscription.ack(r.messages[3:10])
    clock.advance(0)
    assert len(fake.deleted) == 10 and fake.calls["DeleteMessageBatch"] == 1
    r.subscription.ack(r.messages[10:])
    clock.advance(ACK_LINGER)
    assert len(fake.deleted) == 13


def test_implements_the_source_interfaces():
    from zope.interface.verify import verifyObject

    from streamd.interfaces import ISource, ISubscription

    source, fake, clock = make()
    assert verifyObject(ISource, source)
    assert verifyObject(ISubscription, attach(source).subscription)


def test_unreachable_endpoint_is_down_until_it_answers_again():
    source, fake, clock = make()
    r = attach(source)
    fake.error = SQSError("ConnectionError", "ConnectionRefusedError")
    fake.put("1")  # answers the poll in flight
    assert source.status() == ("down", "ConnectionError: ConnectionRefusedError")
    fake.error = None
    clock.advance(PROBE_FIRST)
    assert source.status() == ("ok", None)
    fake.put("2")
    assert r.ids() == ["m1", "m2"]


def test_throttled_through_all_retries_rests_but_stays_up():
    source, fake, clock = make()
    attach(source)
    fake.error = SQSError("ThrottlingException", "slow down", 400)
    fake.put("1")
    polls = fake.calls["ReceiveMessage"]
    assert source.status() == ("ok", None)
    fake.error = None
    clock.advance(REST - 0.1)
    assert fake.calls["ReceiveMessage"] == polls  # resting
    clock.advance(0.1)
    assert fake.calls["ReceiveMessage"] == polls + 1
