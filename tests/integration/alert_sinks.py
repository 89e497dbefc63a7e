"""Where alerts land in tests: a real SMTP server and a Slack-style webhook receiver, on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devstack import free_port


def text_of(message: Message) -> str:
    return "".join(part.get_payload(decode=True).decode() for part in message.walk()
                   if not part.is_multipart() and part.get_payload(decode=True))


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@contextmanager
def webhook_server() -> Iterator[tuple[list[dict], str]]:
    """Yields (received JSON bodies, a Slack-like incoming webhook URL)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXX"
    finally:
        server.shutdown()
        server.server_close()


def alert_connections(smtp_port: int, hook_url: str) -> dict[str, str]:
    """AIRFLOW_CONN_* for the sinks (the SMTP connection carries the sender)."""
    return {
        "AIRFLOW_CONN_SMTP_TEST": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "mls-sync@example.com"}}),
        "AIRFLOW_CONN_SLACK_TEST": json.dumps({"conn_type": "slackwebhook", "password": hook_url}),
    }
