#!/usr/bin/env python3
"""A receiver of prscd's webhooks that checks their signature; standard library only.

    API_KEY=<the app's first API key> PORT=8000 python3 examples/webhook_receiver.py

Point the app's webhook at it (APP_WEBHOOKS=app:http://HOST:8000/hook). Each event
is printed as one JSON line; a request whose X-Prscd-Signature is not the
HMAC-SHA256 of its body under the key is refused with 401, and prscd retries it.
"""
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

KEY = os.environ["API_KEY"].encode()
MAX_BODY = 1 << 20


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        if length > MAX_BODY:
            return self.answer(413)
        body = self.rfile.read(length)
        expected = "sha256=" + hmac.new(KEY, body, hashlib.sha256).hexdigest()
        # compare_digest: no early exit that would time the prefix.
        if not hmac.compare_digest(expected, self.headers.get("X-Prscd-Signature", "")):
            return self.answer(401)
        for event in json.loads(body)["events"]:
            print(json.dumps(event, sort_keys=True), flush=True)
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass  # stdout carries the events only


if __name__ == "__main__":
    server = HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Hook)
    print(f"listening on {server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()
