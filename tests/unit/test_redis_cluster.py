"""The Redis Cluster layer without a cluster: key slots, and redirections with fakes."""

import pytest
import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from streamd.keys import ConfigError
from streamd.redis.cluster import ClusterConnection, parse_redirect, parse_slots
from streamd.redis.connection import connection_settings
from streamd.redis.hub import Hub
from streamd.redis.slots import command_key, hash_tag, key_slot


def test_key_slots_match_redis_and_hash_tags_share_a_slot():
    # Values from CLUSTER KEYSLOT on redis-server 7.0.
    assert key_slot("123456789") == 12739
    assert key_slot("jobs") == key_slot("{jobs}:x") == key_slot(b"{jobs}:streamd:alive:a") == 9631
    assert key_slot("{}jobs") != key_slot("{jobs}")  # an empty tag is no tag
    assert key_slot("a{b}{c}") == key_slot("b")
    assert hash_tag("jobs") == "{jobs}" and hash_tag("{x}:jobs") == "{x}:jobs"


@pytest.mark.parametrize("args, key", [
    (("GET", "k"), b"k"),
    (("EVAL", "return 1", 2, "a", "b", 7), b"a"),
    (("EVAL", "return 1", 0), None),
    (("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", "s", ">"), b"s"),
    (("XREAD", "BLOCK", 10, "STREAMS", "s", "0"), b"s"),
    (("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"), b"s"),
    (("XINFO", "STREAM", "s"), b"s"),
    (("PUBLISH", "ch", "x"), None),
    (("SPUBLISH", "ch", "x"), b"ch"),
    (("PING",), None),
])
def test_the_key_that_routes_a_command(args, key):
    assert command_key(args) == key


def test_redirections_and_slot_map_are_parsed():
    assert parse_redirect("MOVED 3999 127.0.0.1:6381") == ("MOVED", 3999, ("127.0.0.1", 6381))
    assert parse_redirect("ASK 1 :7000") == ("ASK", 1, ("127.0.0.1", 7000))
    assert parse_redirect("WRONGTYPE no") is None
    reply = [[5461, 10922, [b"127.0.0.1", 7001, b"id"], [b"127.0.0.1", 7004, b"id2"]],
             [0, 5460, [b"127.0.0.1", 7000, b"id"]]]
    assert parse_slots(reply) == [(0, 5460, ("127.0.0.1", 7000)),
                                  (5461, 10922, ("127.0.0.1", 7001))]



class FakeNode:
    """A node's pool: replies from C{script} (a function of the command), and its log."""

    def __init__(self, addr, script):
        self.addr = addr
        self.script = script
        self.up = True
        self.closed = False
        self.error = None
        self.sent = []

    def command(self, *args):
        self.sent.append(args)
        try:
            return succeed(self.script(self.addr, args))
        except Exception as e:
            return fail(e)

    def asking(self, *args):
        self.sent.append(("ASKING",))
        return self.command(*args)

    def eval(self, script, keys, args):
        return self.command("EVAL", script, len(keys), *keys, *args)

    def disconnect(self):
        self.up = False
        return succeed(None)

    def local_ports(self):
        return []


class FakeCluster(ClusterConnection):
    script = None

    def _factory(self, poolsize, reply_timeout, protocol=None, host=None, port=None,
                 endpoint=None):
        node = FakeNode((host, port), type(self).script)
        self.factories.append(node)
        return node


A, B, C = ("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)
MAP = [[0, 5460, [b"127.0.0.1", 7000]], [5461, 10922, [b"127.0.0.1", 7001]],
       [10923, 16383, [b"127.0.0.1", 7002]]]


def make(script):
    def run(addr, args):
        if args[:2] == ("CLUSTER", "SLOTS"):
            return MAP
        return script(addr, args)
    FakeCluster.script = staticmethod(run)
    clock = Clock()
    conn = FakeCluster(connection_settings("redis://127.0.0.1:7000", cluster=True), clock)
    clock.advance(0.25)  # the first tick reads the map
    assert conn.up and conn.refreshes == 1
    return conn, clock


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_commands_go_to_the_primary_of_their_slot():
    conn, _ = make(lambda addr, args: addr)
    assert result(conn.command("GET", "foo")) == C  # slot 12182
    assert result(conn.command("GET", "{jobs}:x")) == B  # slot 9631
    assert result(conn.eval("return 1", ["123456789"], [])) == C
    assert result(conn.command("PING")) == A


def redirected(error: str):
    """Node C answers C{error}, the others their address."""
    def script(addr, args):
        if addr == C:
            raise txredisapi.ResponseError(error)
        return addr
    return script


def test_moved_notes_the_new_primary_and_retries_there():
    conn, clock = make(redirected("MOVED 12182 127.0.0.1:7000"))
    assert result(conn.command("GET", "foo")) == A
    assert conn.redirections == 1 and conn.slots[12182] == A
    assert result(conn.command("GET", "foo")) == A  # no second redirection
    assert conn.redirections == 1


def test_ask_sends_asking_once_and_keeps_the_map():
    conn, _ = make(redirected("ASK 12182 127.0.0.1:7001"))
    assert result(conn.command("GET", "foo")) == B
    node_b = conn.pools[B]
    assert node_b.sent[-2:] == [("ASKING",), ("GET", "foo")]
    assert conn.slots[12182] == C


def test_tryagain_and_clusterdown_are_retried_with_backoff():
    errors = ["TRYAGAIN Multiple keys request during rehashing of slot",
              "CLUSTERDOWN The cluster is down"]

    def script(addr, args):
        if errors:
            raise txredisapi.ResponseError(errors.pop(0))
        return "ok"
    conn, clock = make(script)
    d = conn.command("GET", "foo")
    out = []
    d.addBoth(out.append)
    assert not out
    clock.advance(0.05)
    assert not out
    clock.advance(0.1)
    assert out == ["ok"]


def test_other_errors_pass_through_and_too_many_redirections_fail():
    def script(addr, args):
        if args[0] == "BAD":
            raise txredisapi.ResponseError("WRONGTYPE Operation against a key")
        raise txredisapi.ResponseError("MOVED 12182 127.0.0.1:7002")
    conn, _ = make(script)
    with pytest.raises(txredisapi.ResponseError, match="WRONGTYPE"):
        result(conn.command("BAD", "foo"))
    with pytest.raises(txredisapi.ResponseError, match="gave up"):
        result(conn.command("GET", "foo"))


def test_a_command_waits_while_its_primary_is_down_until_the_map_names_another():
    conn, clock = make(lambda addr, args: addr)
    conn.pools[C].up = False
    conn._changed()
    assert not conn.up
    assert "no live primary for slots 10923-16383" in conn.status()[1]
    d = conn.command("GET", "foo")
    out = []
    d.addBoth(out.append)
    clock.advance(1)
    assert not out  # still C in the map
    MAP[2][2][1] = 7005  # the replica took over
    try:
        clock.advance(0.25)
        assert out == [("127.0.0.1", 7005)]
        assert conn.up and [s["primary"] for s in conn.shards()][2] == "127.0.0.1:7005"
    finally:
        MAP[2][2][1] = 7002


def test_settings_take_cluster_and_urls():
    from streamd.redis.settings import read_redis_table
    conns = read_redis_table({"url": "redis://:pw@10.0.0.1:7000", "cluster": True,
                              "urls": ["redis://:pw@10.0.0.2:7000"]}, "redis")
    assert conns["default"].cluster and conns["default"].urls == ("redis://:pw@10.0.0.2:7000",)
    with pytest.raises(ConfigError, match="urls"):
        read_redis_table({"url": "redis://a:1", "urls": ["redis://b:1"]}, "redis")
    with pytest.raises(ConfigError, match="only database 0"):
        read_redis_table({"url": "redis://a:1/2", "cluster": True}, "redis")


def test_the_event_store_takes_a_cluster_from_a_named_connection():
    from streamd.store import make_store
    from tests.support.web import settings
    table = {"url": "redis://:pw@10.0.0.1:7000", "cluster": True,
             "urls": ["redis://:pw@10.0.0.2:7000"], "connect_timeout": 3.0}
    store = make_store(settings(redis={"events": table},
                                store={"backend": "redis", "connection": "events"}), Clock())
    assert store.settings.cluster and store.settings.urls == ("redis://:pw@10.0.0.2:7000",)
    assert store.settings.connect_timeout == 3.0  # the table's, not the URL default's
    assert store.prefix == "{streamd:events}:"  # one slot: the scripts run on one node
    # Without "connection", redis_url as before: one server, the prefix as given.
    plain = make_store(settings(store={"backend": "redis"}), Clock())
    assert not plain.settings.cluster and plain.prefix == "streamd:events:"
    with pytest.raises(ConfigError, match="store.connection: no Redis connection named"):
        make_store(settings(store={"backend": "redis", "connection": "nope"}), Clock())


class FakeSubscriber:
    """A hub's subscriber connection: each SSUBSCRIBE's Deferred, fired by L{confirm}."""

    def __init__(self):
        self.waiting = []
        self.subscribed = []

    def subscribe(self, channels):
        d = Deferred()
        self.waiting.append(d)
        self.subscribed.extend(channels)
        return d

    def unsubscribe(self, channels):
        return succeed(None)

    def confirm(self):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


class Part:
    """A sharded stream's channels of one slot (a hub member), and the gaps it was told of."""

    patterns = []

    def __init__(self, channel):
        self.channels = [channel.encode()]
        self.gaps = []

    def received(self, channel, data, pattern):
        pass

    def outage(self, since, until):
        self.gaps.append((since, until))


def channel_on(first, last, other_than=()):
    """A channel name whose slot is in C{first..last}, not the slot of C{other_than}."""
    taken = {key_slot(c) for c in other_than}
    return next(c for c in (f"ch{n}" for n in range(10_000))
                if first <= key_slot(c) <= last and key_slot(c) not in taken)


def sharded_setup():
    """Three parts: two slots of primary A, one of B, on a connected cluster map."""
    conn, clock = make(lambda addr, args: b"OK")
    a1 = channel_on(0, 5460)
    a2 = channel_on(0, 5460, [a1])
    b1 = channel_on(5461, 10922)
    views = [Hub.sharded(conn, clock, key_slot(c)) for c in (a1, a2, b1)]
    parts = [Part(c) for c in (a1, a2, b1)]
    for view, part in zip(views, parts, strict=True):
        view.add(part)
    router = conn.shared["spubsub"]
    subs = {}
    for addr, hub in router.hubs.items():
        subs[addr] = FakeSubscriber()
        hub.connected(subs[addr])
        subs[addr].confirm()
    return conn, clock, router, views, parts, subs


def test_sharded_pubsub_has_one_connection_per_primary_not_per_slot():
    conn, clock, router, views, parts, subs = sharded_setup()
    assert set(router.hubs) == {A, B}  # two slots of A share one connection
    assert sorted(subs[A].subscribed) == sorted(parts[0].channels + parts[1].channels)
    assert all(v.up for v in views) and not any(p.gaps for p in parts)


def test_a_failover_moves_the_primarys_slots_to_the_new_one_with_one_gap_each():
    conn, clock, router, views, parts, subs = sharded_setup()
    clock.advance(1)
    router.hubs[A].lost(subs[A])  # A dies
    died = clock.seconds()
    assert not views[0].up and views[2].up
    MAP[0][2][1] = 7003  # its replica takes over
    try:
        clock.advance(5)  # the next reading of the map
        D = ("127.0.0.1", 7003)
        assert set(router.hubs) == {B, D}  # A's connection closed: nothing left there
        subs[D] = FakeSubscriber()
        router.hubs[D].connected(subs[D])
        assert not views[0].up  # not before Redis confirmed
        subs[D].confirm()
        assert all(v.up for v in views)
        assert parts[0].gaps == parts[1].gaps == [(died, clock.seconds())]
        assert parts[2].gaps == []  # B's channels noticed nothing
    finally:
        MAP[0][2][1] = 7000


def test_moved_takes_one_slot_to_its_new_primary_and_tells_of_one_gap():
    conn, clock, router, views, parts, subs = sharded_setup()
    slot = key_slot(parts[0].channels[0])
    views[0].remove(parts[0])
    views[0].add(parts[0])  # subscribed again on A: its SSUBSCRIBE in flight
    router.moved(f"MOVED {slot} 127.0.0.1:7001")  # ... answered MOVED
    subs[A].confirm()  # the answer reaches the SSUBSCRIBE's Deferred: not an arrival
    assert not views[0].up and parts[0].gaps == []
    clock.advance(0)
    assert parts[0].channels[0] in subs[B].subscribed  # on B's connection, no new one
    assert set(router.hubs) == {A, B}
    subs[B].confirm()
    assert views[0].up and len(parts[0].gaps) == 1
    assert parts[1].gaps == parts[2].gaps == []
    assert conn.redirections == 1
