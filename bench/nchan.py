"""
nginx with the Nchan module, the server fanout.py compares streamd with: one worker (or
C{workers}), not a daemon, a temp prefix, on a free loopback port (see common.py for the
rest of what starts a server).
"""

from __future__ import annotations

import os
import resource
import shutil

from common import HOST, Process, accepts, children, free_port, wait_for

NCHAN_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")

NGINX_CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen {host}:{port} backlog=4096;
        location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; }}
        location ~ ^/sub/(\\w+)$ {{ nchan_subscriber http-chunked; nchan_channel_id $1; }}
        location ~ ^/sse/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}
    }}
}}
"""


def nchan_module() -> str | None:
    for d in NCHAN_MODULE_DIRS:
        path = os.path.join(d, "ngx_nchan_module.so")
        if os.path.exists(path):
            return path
    return None


def nchan_missing() -> str | None:
    """Why Nchan cannot run here, or None."""
    if not shutil.which("nginx"):
        return "no nginx (apt-get install nginx libnginx-mod-nchan)"
    if not nchan_module():
        return "no ngx_nchan_module.so (apt-get install libnginx-mod-nchan)"
    return None


class Nchan(Process):
    """nginx with Nchan: one worker (or C{workers}), in the foreground, a temp prefix."""

    name = "nchan"
    ndjson_suffix = b"\n"  # a message is sent as one chunk, as published: end it with a line end

    def start(self, workers: int = 1, **_) -> None:
        self.port = free_port()
        self.workers = workers
        conf = os.path.join(self.dir, "nginx.conf")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(module=nchan_module(), dir=self.dir, host=HOST,
                                      port=self.port, nofile=nofile, workers=workers,
                                      connections=max(1024, nofile - 1000)))
        self.spawn(["nginx", "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir,
                                                                            "error.log")])
        try:
            wait_for(lambda: accepts(self.port) and len(children(self.proc.pid)) >= workers, 15,
                     "nginx to listen", self.proc)
        except RuntimeError as e:
            tail = self.log_tail() + self.error_log()
            self.stop()
            raise RuntimeError(f"{e} ({' '.join(self.command)}):\n{tail}") from None

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def sub_request(self, name: str, sse: bool) -> bytes:
        # Nchan answers 403 to a chunked subscriber that does not send TE: chunked, and to
        # an EventSource one without Accept: text/event-stream.
        path, extra = (f"/sse/{name}", "Accept: text/event-stream") if sse else (
            f"/sub/{name}", "TE: chunked")
        return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{extra}\r\n\r\n".encode()

    def pub_path(self, name: str) -> str:
        return f"/pub/{name}"

    pub_ok = (201, 202)
    info_headers = {"Accept": "text/json"}

    def info_path(self, name: str) -> str:
        """The channel's info (404 until it exists)."""
        return f"/pub/{name}"

    def subscribers(self, info: dict) -> int:
        return info.get("subscribers", 0)

    @staticmethod
    def workers_up(info: dict) -> int | None:
        return None

    def log_problems(self) -> int:
        log = self.error_log()
        return log.count("[alert]") + log.count("[crit]") + log.count("[emerg]")
