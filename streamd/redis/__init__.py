"""
Every use of Redis in streamd, over txredisapi (replies read by hiredis):

  - L{streamd.redis.url}: the one Redis URL parser (C{redis://}, C{rediss://}, user,
    password, db);
  - L{streamd.redis.settings}: the C{[redis]} table and the Redis source kinds' keys
    (plain data, no Twisted);
  - L{streamd.redis.connection}: connections and pools (L{RedisConnection}), the one
    place a txredisapi factory is set up;
  - L{streamd.redis.cluster}: a Redis Cluster under the same API (C{cluster = true}):
    the slot map, a pool per primary, MOVED/ASK/TRYAGAIN/CLUSTERDOWN, failover;
    L{streamd.redis.slots}: key slots and hash tags (plain data);
  - L{streamd.redis.hub}: the pub/sub hub, one subscriber connection shared by every
    subscriber on a connection, resubscribing after a reconnection;
  - L{streamd.redis.shared}, L{streamd.redis.values}, L{streamd.redis.read_loop}: what
    the Redis sources share (connections by name, fault counters, message bodies, the
    read loop of a queue client);
  - L{streamd.redis.channels}: the C{[channels] backend = "redis"} store.

The Redis sources (L{streamd.sources.redis_pubsub}, C{redis_list}, C{redis_stream}), the
event store (L{streamd.store.redis}) and the client (L{streamd.client.RedisLink}) build on
these. Fakes and a private redis-server for tests: L{streamd.testing.redis}.
"""
