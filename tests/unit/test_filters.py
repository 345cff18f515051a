"""Filters and sampling: the pure module, the Stream's use of it, and over HTTP."""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet.task import Clock

from streamd import config, filters
from streamd.errors import InvalidRequest
from streamd.framing import NDJSON
from streamd.message import Message
from streamd.stream import Stream
from streamd.testing import FakeRequest, FakeSource
from tests.support.web import open_stream, publish, settings, within

STREAM = {
    "text_fields": ["text", "user.name"],
    "id_fields": ["user.id", "mentions"],
    "location_field": "geo",
    "fields": [],
}


def conf(**over):
    s = config.load_settings({"streams": {"t": {**STREAM, **over}}}, {})
    return s.streams["t"]


def msg(value, mid="1"):
    return Message(mid, "t", json.dumps(value).encode())


def passes(params, value, **over):
    f = filters.parse({k: v if isinstance(v, list) else [v] for k, v in params.items()},
                      conf(**over))
    return f.matches(msg(value))


TWEET = {"text": "Twisted Python rocks", "user": {"id": 23, "name": "Ann"},
         "mentions": [291], "geo": [-0.12, 51.5], "kind": "post"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"track": "python"}, True),
        ({"track": "PYTHON twisted"}, True),  # all terms of a phrase, any case
        ({"track": "python java"}, False),
        ({"track": "java,ann"}, True),  # any phrase; text_fields include user.name
        ({"follow": "23"}, True),
        ({"follow": "291"}, True),  # a list field matches any element
        ({"follow": "7"}, False),
        ({"locations": "-1,51,0,52"}, True),  # London box
        ({"locations": "2,48,3,49"}, False),  # Paris box
        ({"locations": "2,48,3,49,-1,51,0,52"}, True),  # any box
        ({"track": "java", "follow": "23"}, True),  # OR across track/follow/locations
        ({"track": "java", "follow": "7", "locations": "2,48,3,49"}, False),
        ({"where.kind": "post"}, True),
        ({"where.kind": ["reply", "post"]}, True),  # OR within a field
        ({"where.kind": "post", "where.user.id": "24"}, False),  # AND across fields
        ({"where.kind": "post", "track": "java"}, False),  # where AND any-of
        ({"where.kind": "post", "track": "rocks"}, True),
    ],
)
def test_filter_semantics(params, expected):
    assert passes(params, TWEET) is expected


def test_track_whole_payload_when_no_text_fields():
    assert passes({"track": "post"}, TWEET, text_fields=[])
    assert not passes({"track": "post"}, TWEET)


def test_location_shapes():
    for geo in ({"lon": -0.1, "lat": 51.5}, {"type": "Point", "coordinates": [-0.1, 51.5]},
                [-0.5, 51.2, 0.3, 51.7]):
        assert passes({"locations": "-1,51,0,52"}, {"geo": geo})
    assert not passes({"locations": "-1,51,0,52"}, {"geo": "London"})


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"locations": "1,2,3"}, "locations"),
        ({"locations": "0,-200,1,1"}, "locations"),
        ({"locations": "5,5,1,1"}, "locations"),
        ({"track": ",".join(str(i) for i in range(401))}, "track"),
        ({"sample": "0"}, "sample"),
        ({"sample": "1.5"}, "sample"),
        ({"sample": "half"}, "sample"),
    ],
)
def test_invalid_filters_name_the_parameter(params, named):
    with pytest.raises(InvalidRequest) as e:
        filters.parse({k: [v] for k, v in params.items()}, conf())
    assert e.value.message.startswith(named + ":")


def test_unknown_field_when_fields_declared():
    with pytest.raises(InvalidRequest) as e:
        filters.parse({"where.colour": ["red"]}, conf(fields=["kind"]))
    assert "where.colour" in e.value.message and "kind" in e.value.message
    assert filters.parse({"where.kind": ["x"]}, conf(fields=["kind"]))


def test_sampling_is_deterministic_and_nested():
    ids = [str(i) for i in range(20000)]
    a = [i for i in ids if filters.sampled(i, 0.1)]
    b = [i for i in ids if filters.sampled(i, 0.1)]
    c = [i for i in ids if filters.sampled(i, 0.2)]
    assert a == b
    assert set(a) <= set(c)
    assert 1700 < len(a) < 2300


def test_filtered_out_messages_skip_the_queue_and_are_handed_back():
    source = FakeSource()
    request = FakeRequest()
    f = filters.parse({"where.kind": ["keep"]}, conf())
    stream = Stream(request, source, NDJSON, Clock(), heartbeat=0, filter=f, max_pending=2)
    stream.start()
    stream.pauseProducing()
    sub = source.subscriptions[0]
    drop = source.make(50, b'{"kind": "drop"}')
    sub.consumer.deliver(drop)
    assert stream.queued == 0 and not stream.ended  # costs the slow client nothing
    assert sub.skipped == drop  # the source decides: a queue gives them to others
    keep = source.make(1, b'{"kind": "keep"}')
    sub.consumer.deliver(keep)
    stream.resumeProducing()
    assert [json.loads(line)["id"] for line in request.lines()] == [keep[0].id]
    assert sub.acked == keep


def test_stall_warning_before_the_slow_policy():
    source = FakeSource()
    request = FakeRequest()
    stream = Stream(request, source, NDJSON, Clock(), heartbeat=0, max_pending=10,
                    stall_warnings=True)
    stream.start()
    stream.pauseProducing()
    source.push(4)
    assert request.lines() == []
    source.push(1)
    warning = json.loads(request.lines()[0])["warning"]
    assert warning["code"] == "FALLING_BEHIND" and warning["percent_full"] == 50
    source.push(3)
    assert len(request.lines()) == 1  # once per falling behind
    assert not stream.ended


ensure = pytest_twisted.ensureDeferred


@ensure
async def test_filters_over_http_query_and_post_body(serve):
    server = await serve(settings({"tweets": STREAM}))
    url = server.url + "/streams/tweets"
    by_query = await open_stream(url + "?track=python&limit=2")
    body = json.dumps({"follow": ["291"], "locations": [2, 48, 3, 49]}).encode()
    resp = await within(treq.post(url + "/filter?limit=2", data=body, unbuffered=True,
                                  headers={"Content-Type": "application/json"}))
    assert resp.code == 200
    from tests.support.web import StreamReader

    by_body = StreamReader(resp)
    form = await within(treq.post(url + "/filter?limit=1", data={"where.kind": "reply"},
                                  unbuffered=True))
    by_form = StreamReader(form)
    await server.wait_open_streams(3)
    await publish(url + "/messages",
                  {"text": "I like Python", "user": {"id": 1}, "kind": "post"},
                  {"text": "nothing", "user": {"id": 2}, "mentions": [291], "kind": "reply"},
                  {"text": "bonjour", "user": {"id": 3}, "geo": [2.35, 48.85], "kind": "post"},
                  {"text": "python again", "user": {"id": 4}, "kind": "post"})
    await within(by_query.done)
    await within(by_body.done)
    await within(by_form.done)
    assert [m["data"]["user"]["id"] for m in by_query.items] == [1, 4]
    assert [m["data"]["user"]["id"] for m in by_body.items] == [2, 3]
    assert [m["data"]["user"]["id"] for m in by_form.items] == [2]


@ensure
async def test_sample_endpoint_uses_stream_rate_and_clients_agree(serve):
    server = await serve(settings({"s": {"sample": 0.25}}))
    url = server.url + "/streams/s"
    a = await open_stream(url + "/sample")
    b = await open_stream(url + "?sample=0.25")
    await server.wait_open_streams(2)
    await publish(url + "/messages", *range(400))
    await publish(url + "/messages", "end")
    expected = [str(i) for i in range(1, 402) if filters.sampled(str(i), 0.25)]
    await a.wait_for(len(expected))
    await b.wait_for(len(expected))
    assert [m["id"] for m in a.items] == [m["id"] for m in b.items] == expected
    a.close()
    b.close()


@ensure
async def test_bad_filter_is_400_naming_the_parameter(serve):
    server = await serve(settings({"tweets": STREAM}))
    r = await treq.get(server.url + "/streams/tweets?locations=1,2,3")
    assert r.code == 400
    assert (await treq.json_content(r))["error"]["message"].startswith("locations:")


# -- a durable source: an SQS queue shared by filtered clients -----------------------------

from tests.support.sqs_server import moto, queue  # noqa: E402,F401  (fixtures)


