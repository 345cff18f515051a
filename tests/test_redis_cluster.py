"""The Redis Cluster layer without a cluster: key slots, and redirections with fakes."""

import pytest
import txredisapi
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from streamd.keys import ConfigError
from streamd.redis.cluster import ClusterConnection, parse_redirect, parse_slots
from streamd.redis.connection import connection_settings
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
