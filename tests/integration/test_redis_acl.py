"""
The event store and the client with a Redis user (ACL) and over TLS (rediss://), against
a private redis-server: they take the same URLs as the Redis sources.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from streamd.client import RedisLink
from streamd.store.base import new_event
from streamd.store.redis import RedisStore
from streamd.testing.redis import RedisServer, needs_redis_server, redis_fixture  # noqa: F401
from tests.support.web import wait_until, within

ensure = pytest_twisted.ensureDeferred


def add_user(server: RedisServer, name: str, password: str) -> None:
    """A Redis user allowed everything, as an operator would create one."""
    server.command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    # The default user may no longer connect: only a client that logs in as the user works.
    server.command("ACL", "SETUSER", "default", "off")


async def store_and_client(url: str, tls_ca: str = ""):
    store = RedisStore(["kind"], reactor, url, prefix="acl:", tls_ca=tls_ca)
    link = RedisLink.from_url(reactor, url, tls_ca=tls_ca)
    store.start()
    try:
        await wait_until(lambda: store.status()[0] == "ok")
        stored = await store.insert([new_event(b'{"kind":"k"}', store.keys)])
        assert await store.count() == 1 and stored[0].data == b'{"kind":"k"}'
        assert await within(link.command("ACL", "WHOAMI")) == b"alice"
        heard = defer.Deferred()
        await within(link.subscribe(b"news", heard.callback))
        await within(link.command("PUBLISH", b"news", b"hello"))
        assert await within(heard) == b"hello"
    finally:
        await store.stop()
        await link.close()


@ensure
async def test_store_and_client_log_in_as_a_redis_user(redis):
    add_user(redis, "alice", "s3cret")
    await store_and_client(f"redis://alice:s3cret@127.0.0.1:{redis.port}/0")


@ensure
async def test_store_and_client_with_a_wrong_password_say_so(redis):
    add_user(redis, "alice", "s3cret")
    store = RedisStore(["kind"], reactor, f"redis://alice:wrong@127.0.0.1:{redis.port}/0")
    store.start()
    try:
        with pytest.raises(Exception, match="not connected to redis://127.0.0.1"):
            await store.insert([new_event(b'{"kind":"k"}', store.keys)])
    finally:
        await store.stop()


@needs_redis_server
@ensure
async def test_store_and_client_over_tls_as_a_redis_user(tmp_path):
    server = RedisServer(tls_dir=str(tmp_path))  # speaks TLS only
    server.start()
    try:
        add_user(server, "alice", "s3cret")
        await store_and_client(f"rediss://alice:s3cret@localhost:{server.port}/0", server.ca)
    finally:
        server.stop()
