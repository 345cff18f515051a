"""Value channels and subscriptions: snapshot, changes, PATCH on an open stream, idle."""

import json

import pytest_twisted
import treq
from twisted.internet.task import Clock

from streamd.channels import MemoryChannels, Subscriptions
from streamd.framing import ValuesNDJSON
from streamd.stream import Stream
from streamd.testing import FakeRequest
from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.web import StreamReader, open_stream, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


def test_snapshot_then_changes_then_idle_line():
    clock = Clock()
    store = MemoryChannels()
    store.set("X", b"2")
    store.set("Y", b"85")
    subs = Subscriptions(store, clock)
    sub = subs.create(["X", "Y", "Z"])
    request = FakeRequest()
    Stream(request, sub, ValuesNDJSON, clock, heartbeat=10).start()
    store.set("Y", b"43")
    store.set("W", b"1")  # not subscribed
    clock.advance(10)
    assert [json.loads(x) for x in request.lines()] == [
        {"X": 2, "Y": 85, "Z": None},
        {"Y": 43},
        {"Updates": False},
    ]


def test_patch_adds_and_removes_on_open_stream():
    clock = Clock()
    store = MemoryChannels()
    store.set("Z", b"48")
    sub = Subscriptions(store, clock).create(["X"])
    request = FakeRequest()
    Stream(request, sub, ValuesNDJSON, clock, heartbeat=0).start()
    sub.change(add=["Z"], remove=["X"])
    store.set("X", b"1")
    store.set("Z", b"49")
    assert [json.loads(x) for x in request.lines()] == [{"X": None}, {"Z": 48}, {"Z": 49}]
    assert set(store.watchers) == {"Z"}


def test_idle_subscriptions_expire_but_open_ones_stay():
    clock = Clock()
    store = MemoryChannels()
    subs = Subscriptions(store, clock, expire=100)
    idle = subs.create(["a"])
    busy = subs.create(["a"])
    Stream(FakeRequest(), busy, ValuesNDJSON, clock, heartbeat=0).start()
    clock.advance(101)
    assert idle.id not in subs.by_id
    assert busy.id in subs.by_id


@ensure
async def test_subscription_flow_over_http(serve):
    server = await serve(settings(channels={"idle": 0.2}))
    url = server.url

    async def put(name, value):
        r = await within(treq.put(f"{url}/channels/{name}", data=json.dumps(value).encode(),
                                  headers={"Content-Type": "application/json"}))
        assert r.code == 200

    await put("X", 2)
    await put("Y", 85)
    await put("Z", 48)
    r = await within(treq.get(url + "/channels/Y"))
    assert (await treq.json_content(r)) == {"channel": "Y", "value": 85}
    r = await within(treq.post(url + "/subscriptions",
                               data=json.dumps({"channels": ["X", "Y", "Z"]}).encode(),
                               headers={"Content-Type": "application/json"}))
    assert r.code == 201
    sub = await treq.json_content(r)
    cookie = r.headers.getRawHeaders("set-cookie")[0]
    assert cookie.startswith(f"streamd_subscription={sub['id']}")
    # The cookie alone names the subscription (what a browser sends).
    reader = await open_stream(url + "/subscription",
                               {"Cookie": f"streamd_subscription={sub['id']}"})
    assert (await reader.wait_for(1))[0] == {"X": 2, "Y": 85, "Z": 48}
    await put("Y", 43)
    assert (await reader.wait_for(2))[1] == {"Y": 43}
    # PATCH takes effect on the open stream.
    r = await within(treq.patch(f"{url}/subscriptions/{sub['id']}",
                                data=json.dumps({"add": ["W"], "remove": ["X"]}).encode(),
                                headers={"Content-Type": "application/json"}))
    assert (await treq.json_content(r))["channels"] == ["Y", "Z", "W"]
    assert (await reader.wait_for(3))[2] == {"W": None}
    await put("X", 3)  # removed: not sent
    await put("W", 7)
    items = await reader.wait_for(4)
    assert items[3] == {"W": 7}
    items = await reader.wait_for(5)
    assert items[4] == {"Updates": False}
    # DELETE ends the open stream cleanly.
    r = await within(treq.delete(f"{url}/subscriptions/{sub['id']}"))
    assert r.code == 204
    await within(reader.done)
    r = await within(treq.get(f"{url}/subscriptions/{sub['id']}/stream"))
    assert r.code == 404


@ensure
async def test_subscription_errors(serve):
    server = await serve(settings(channels={"max_channels": 2}))
    url = server.url
    for body, code in ((b"{}", 400), (b'{"channels": ["a", "b", "c"]}', 400),
                       (b'{"channels": ["bad name!"]}', 400), (b"[", 400)):
        r = await within(treq.post(url + "/subscriptions", data=body,
                                   headers={"Content-Type": "application/json"}))
        assert r.code == code
    r = await within(treq.get(url + "/channels/never-set"))
    assert r.code == 404
    r = await within(treq.get(url + "/subscription"))
    assert r.code == 404
    r = await within(treq.put(url + "/channels/x", data=b"{oops",
                              headers={"Content-Type": "application/json"}))
    assert r.code == 400


@ensure
async def test_subscription_sse(serve):
    server = await serve()
    r = await within(treq.post(server.url + "/subscriptions", data=b'{"channels": ["a"]}',
                               headers={"Content-Type": "application/json"}))
    sub = await treq.json_content(r)
    resp = await within(treq.get(server.url + sub["stream"] + "?format=sse", unbuffered=True))
    reader = StreamReader(resp, sse=True)
    items = await reader.wait_for(2)
    assert items[1] == {"data": '{"a":null}'}
    reader.close()
    await wait_until(lambda: not server.app.open_streams)




