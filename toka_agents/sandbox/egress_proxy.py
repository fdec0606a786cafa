"""toka-agents' egress proxy: the one way out of a limited-network sandbox.

Runs inside the proxy container (started by `egress.start_egress`), stdlib only, as
`python3 -c SOURCE ALLOW_JSON`. It speaks HTTP proxying (absolute-form requests) and CONNECT
tunnels, and lets through only the hosts in the allow list: `host` (any port) or `host:port`.
Every other destination gets a 403 whose reason names it, so the refusal shows in the output
of the code that asked. The proxy resolves the names it lets through itself, on its upstream
network; the sandbox never needs DNS.
"""

from __future__ import annotations

import json
import select
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT = 3128
IDLE_SECONDS = 300
CONNECT_SECONDS = 10
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}


def parse_allow(entries: list[str]) -> tuple[set[str], set[tuple[str, int]]]:
    """The hosts allowed on any port, and the (host, port) pairs allowed."""
    any_port, pairs = set(), set()
    for entry in entries:
        host, _, port = entry.lower().partition(":")
        if port:
            pairs.add((host, int(port)))
        else:
            any_port.add(host)
    return any_port, pairs


def allows(entries: list[str], host: str, port: int) -> bool:
    """Whether the allow list `entries` lets `host:port` through: the matching of the proxy,
    and of toka-agents on the host for what it reaches on an agent's behalf (an MCP server
    over HTTP)."""
    any_port, pairs = parse_allow(entries)
    return _matches(any_port, pairs, host, port)


def _matches(any_port: set[str], pairs: set[tuple[str, int]], host: str, port: int) -> bool:
    host = host.lower().rstrip(".")
    return host in any_port or (host, port) in pairs


# Run as the proxy (`python3 -c SOURCE ALLOW_JSON`), the allow list is its first argument.
ANY_PORT, PAIRS = parse_allow(
    json.loads(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else []
)


def allowed(host: str, port: int) -> bool:
    return _matches(ANY_PORT, PAIRS, host, port)


def relay(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes or both stay quiet too long."""
    sockets = [one, other]
    while True:
        readable, _, _ = select.select(sockets, [], [], IDLE_SECONDS)
        if not readable:
            return
        for source in readable:
            data = source.recv(65536)
            if not data:
                return
            (other if source is one else one).sendall(data)


class Handler(BaseHTTPRequestHandler):
    server_version = "toka-egress"

    def refuse(self, host: str, port: int) -> None:
        reason = f"{host}:{port} is not in network_allow (toka egress proxy)"
        self.log_message("refused %s:%d", host, port)
        body = f"refused by the toka egress proxy: {host}:{port} is not in network_allow\n".encode()
        self.send_response(403, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def upstream(self, host: str, port: int) -> socket.socket | None:
        try:
            return socket.create_connection((host, port), timeout=CONNECT_SECONDS)
        except OSError as exc:
            self.send_error(502, f"toka egress proxy could not reach {host}:{port}: {exc}")
            return None

    def do_CONNECT(self) -> None:
        host, _, port_text = self.path.rpartition(":")
        if not host or not port_text.isdigit():
            self.send_error(400, "CONNECT needs host:port")
            return
        port = int(port_text)
        if not allowed(host, port):
            self.refuse(host, port)
            return
        remote = self.upstream(host, port)
        if remote is None:
            return
        with remote:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            remote.settimeout(None)
            relay(self.connection, remote)
        self.close_connection = True

    def forward(self) -> None:
        url = urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "toka egress proxy: send absolute http:// URLs (or CONNECT)")
            return
        host, port = url.hostname, url.port or 80
        if not allowed(host, port):
            self.refuse(host, port)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        remote = self.upstream(host, port)
        if remote is None:
            return
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        lines = [f"{self.command} {target} HTTP/1.0"]
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        lines.append("Connection: close")
        with remote:
            remote.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            remote.settimeout(IDLE_SECONDS)
            while data := remote.recv(65536):
                self.wfile.write(data)
        self.log_message("allowed %s:%d", host, port)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = forward


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(f"toka egress proxy listening on {PORT}", flush=True)
    server.serve_forever()
