cat > redis.toml <<'TOML'
[redis]                          # the connection named "default"
url = "redis://127.0.0.1:/0" # redis://[[user]:password@]host:port/db, rediss:// for TLS

[streams.chat]                   # broadcast, at-most-once
source = "redis-pubsub"
channels = ["chat"]
patterns = ["chat.*"]

[streams.jobs]                   # a work queue, at-least-once
source = "redis-list"
key = "jobs"

[streams.events]                 # a log every client reads from its own position
source = "redis-stream"
key = "events"

[streams.work]                   # the same kind of log, shared out as a queue
source = "redis-stream"
key = "work"
group = "workers"
TOML
