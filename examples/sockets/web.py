#!/usr/bin/env python3
"""A tiny HTTP server that takes its listening socket from taskforce (or
systemd): fd 3, as sd_listen_fds(3) describes, or port 8080 when run by hand.

Each answer names the process that gave it, so a client can see which worker
served it and that none of its requests is refused while workers restart.
"""

import http.server
import os
import socket
import socketserver


def listening_socket() -> socket.socket:
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", 0)):
        return socket.socket(fileno=3)  # held by taskforce: already bound and listening
    sock = socket.create_server(("127.0.0.1", 8080))
    return sock


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"served by pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: one line a request would flood the log


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket = sock  # neither bound nor listened to again


if __name__ == "__main__":
    Server(listening_socket()).serve_forever()
