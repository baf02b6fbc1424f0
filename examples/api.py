#!/usr/bin/env python3
"""Calls prscd's presence API (docs/openapi.yaml) with nothing but the standard library.

    PRSCD_URL=https://presence.example.com APP=chat API_KEY=... python3 examples/api.py room-1 [user-to-disconnect]

PRSCD_URL is a node's client port (https) or its METRICS_PORT (http, private).
For a node on the dev certificate, set PRSCD_CA to its PEM (.prscd-dev/cert.pem)
or PRSCD_INSECURE=1 (never in production).
"""
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

BASE = os.environ.get("PRSCD_URL", "https://127.0.0.1:8443").rstrip("/")
APP = os.environ.get("APP", "dev")
KEY = os.environ["API_KEY"]


def tls():
    if os.environ.get("PRSCD_INSECURE") == "1":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("PRSCD_CA"))


def call(method, path, body=None):
    url = f"{BASE}/v1/apps/{urllib.parse.quote(APP, safe='')}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=tls() if url.startswith("https") else None) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main():
    channel = sys.argv[1] if len(sys.argv) > 1 else "room-1"
    quoted = urllib.parse.quote(channel, safe="")
    status, body = call("GET", "/channels")
    print("channels", status, json.dumps(body))
    status, body = call("GET", f"/channels/{quoted}/users")
    print("users", status, json.dumps(body))
    # Shaped as the published client sends data, so `subscribe("chat", cb)` fires.
    message = {"from": "backend", "data": {"event": "chat", "data": json.dumps({"text": "hello from Python"})}}
    status, body = call("POST", f"/channels/{quoted}/messages", message)
    print("message", status, json.dumps(body))
    if len(sys.argv) > 2:
        user = urllib.parse.quote(sys.argv[2], safe="")
        status, body = call("POST", f"/users/{user}/disconnect")
        print("disconnect", status, json.dumps(body))
    return 0 if status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
