"""
The command-line tools, installed as console scripts::

    streamd-tail URL [--limit N] [--sse] [--token T] [--since ID]
    streamd-pub URL [FILE|-] [--token T]

C{streamd-tail} prints one record per line (as one line of JSON) as they arrive,
reconnecting and resuming after network errors and 5xx, and exits 0 after C{--limit}
records or when the server ends the stream; 1 with the server's message on a 4xx.
C{streamd-pub} publishes one JSON value, or NDJSON (one value per line), from a file
or stdin, and prints the ids the server gave them.

These are entry points: they run the global reactor (C{task.react}).
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlsplit, urlunsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.client import Agent

from streamd.client.client import StreamClient
from streamd.client.results import ClientError, GaveUp, error_message


def _tail_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamd-tail", description="Print a stream's records, one per line.")
    p.add_argument("url", help="the stream's URL, e.g. http://localhost:8080/streams/news")
    p.add_argument("--limit", type=int, help="exit 0 after this many records")
    p.add_argument("--sse", action="store_true", help="ask for Server-Sent Events")
    p.add_argument("--token", help="bearer token (Authorization header)")
    p.add_argument("--since", help="resume after this record id")
    p.add_argument("--max-retries", type=int, metavar="N",
                   help="give up once N connection attempts in a row have failed (the "
                        "first one counts: 2 means one retry; default: never)")
    p.add_argument("--idle-timeout", type=float,
                   help="reconnect after this many seconds without a byte (streamd sends "
                        "a heartbeat every 15 s by default)")
    return p


async def _tail(reactor, args) -> None:
    client = StreamClient(args.url, reactor=reactor, sse=args.sse, token=args.token,
                          since=args.since, max_retries=args.max_retries,
                          idle_timeout=args.idle_timeout)
    out = sys.stdout.buffer

    async def consume() -> None:
        while True:
            record = await client.queue.get()
            out.write(record.line + b"\n")
            out.flush()

    consumer = Deferred.fromCoroutine(consume())
    consumer.addErrback(lambda f: None)  # cancelled at the end
    try:
        await client.start(limit=args.limit)
    except (ClientError, GaveUp) as e:
        print(f"streamd-tail: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        consumer.cancel()


def tail_main(argv: list[str] | None = None) -> None:
    """C{streamd-tail}."""
    args = _tail_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        _tail_parser().error("--limit: must be at least 1")
    if args.max_retries is not None and args.max_retries < 1:
        _tail_parser().error("--max-retries: must be at least 1")
    react(lambda reactor: Deferred.fromCoroutine(_tail(reactor, args)))


def _pub_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamd-pub",
        description="Publish JSON (one value) or NDJSON (one value per line) to a stream.")
    p.add_argument("url", help="the stream's URL (or its /messages URL)")
    p.add_argument("file", nargs="?", default="-", help="a file, or - for stdin (default)")
    p.add_argument("--token", help="bearer token (Authorization header)")
    return p


def messages_url(url: str) -> str:
    """A stream's URL -> its publish URL (C{.../streams/NAME/messages})."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/messages"):
        path += "/messages"
    return urlunsplit(parts._replace(path=path))


def content_type(body: bytes) -> str:
    """One JSON value is sent as JSON; anything else as NDJSON (the server checks lines)."""
    try:
        json.loads(body)
    except ValueError:
        return "application/x-ndjson"
    return "application/json"


async def _pub(reactor, args) -> None:
    if args.file == "-":
        body = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            body = f.read()
    headers: dict[bytes | str, bytes | str] = {"Content-Type": content_type(body)}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    http = HTTPClient(Agent(reactor))
    try:
        response = await http.post(messages_url(args.url), data=body, headers=headers,
                                   reactor=reactor, timeout=30)
    except Exception as e:
        print(f"streamd-pub: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    answer = await treq.content(response)
    if not 200 <= response.code < 300:
        print(f"streamd-pub: {response.code} {error_message(answer)}", file=sys.stderr)
        raise SystemExit(1)
    sys.stdout.buffer.write(answer.rstrip(b"\n") + b"\n")
    sys.stdout.buffer.flush()


def pub_main(argv: list[str] | None = None) -> None:
    """C{streamd-pub}."""
    args = _pub_parser().parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(_pub(reactor, args)))


if __name__ == "__main__":
    # python -m streamd.client.cli tail|pub ARGS (what the console scripts run)
    command, rest = (sys.argv[1] if len(sys.argv) > 1 else ""), sys.argv[2:]
    {"tail": tail_main, "pub": pub_main}.get(command, lambda _: sys.exit(
        "usage: python -m streamd.client.cli tail|pub ARGS"))(rest)
