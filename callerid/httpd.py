"""The daemons' HTTP endpoint: /metrics for Prometheus and a small landing page at /."""

from __future__ import annotations

import html
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

try:
    from prometheus_client import disable_created_metrics
except ImportError:  # prometheus_client 0.16 (Debian 12's package): the same switch, no setter yet
    def disable_created_metrics() -> None:
        from prometheus_client import metrics
        metrics._use_created = False

from . import __version__


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # scrapes every 15 s are not news
        pass


def _server_class(host: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

        def server_bind(self):
            if family == socket.AF_INET6 and host in ("::", ""):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
            super().server_bind()

    return Server


def landing_page(title: str, lines: list[str]) -> bytes:
    items = "".join(f"<li>{html.escape(x)}</li>" for x in lines)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>callerid {__version__}</p><ul>{items}</ul>"
            "<p><a href='metrics'>metrics</a></p></body></html>").encode()


def app(registry, title: str, info):
    """WSGI app: / landing page (info() gives its lines at request time), /metrics, else 404."""
    metrics = make_wsgi_app(registry)

    def handle(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/":
            body = landing_page(title, info())
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]

    return handle


def serve(host: str, port: int, registry, title: str, info=lambda: []):
    """Serve in a daemon thread; returns the server (call .shutdown() to stop)."""
    # *_created series double every counter's series count and nobody graphs them.
    disable_created_metrics()
    httpd = make_server(host, port, app(registry, title, info), _server_class(host), handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
