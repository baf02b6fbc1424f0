#!/usr/bin/env python3
"""A backend service on the prscd mesh, in the role YoMo source and stream
functions played for the original: it reads a channel's traffic, watches who
is in it, and writes into it. Browsers in the channel see its messages with
`p` set to its name.

Needs `eclipse-zenoh==1.10.2` and `msgpack` (mesh/install-python.sh makes a
venv with both). Run next to a node that listens for zenoh, e.g.

    ZENOH_LISTEN=tcp/127.0.0.1:7447 cargo run --release
    python3 examples/backend.py --connect tcp/127.0.0.1:7447 --app dev --channel room-1

Key expressions (mesh/README.md):
  prscd/<app>/<channel>                                 channel traffic (msgpack Signalling)
  prscd/<app>/<channel>/<mesh_id>/<sid>/<client_id>     liveliness token per member
Chunks are percent-encoded (`%`, `/`, `*`, `$`, `?`, `#`, `@`, controls, space).

Output: one JSON line per event on stdout, so that programs (and the test
that runs this example) can read it:
  {"event": "ready"}
  {"event": "member", "alive": true, "client": "alice", "mesh": "eu"}
  {"event": "message", "t": "data", "op": null, "p": "alice", "mesh": "eu", "pl": {...}}
  {"event": "published", "text": "..."}
"""

import argparse
import json
import sys
import threading
import time
import urllib.parse

import msgpack
import zenoh

RESERVED = set("%/*$?#@")


def chunk(name: str) -> str:
    """Percent-encodes one key-expression chunk the way prscd does."""
    out = []
    for ch in name:
        if ch in RESERVED or (ord(ch) < 0x80 and (ord(ch) <= 0x20 or ord(ch) == 0x7F)):
            out.append("%%%02X" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def emit(**event) -> None:
    try:
        print(json.dumps(event, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # the reader went away: nothing left to tell
        pass


def decode_payload(raw):
    """`pl` is msgpack inside msgpack: decode it for display."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            return msgpack.unpackb(raw, raw=False)
        except Exception:  # not msgpack: show its length
            return {"bytes": len(raw)}
    return raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", action="append", required=True, help="zenoh endpoint of a node or router, e.g. tcp/127.0.0.1:7447")
    ap.add_argument("--app", required=True, help="app id (not the public key)")
    ap.add_argument("--channel", required=True)
    ap.add_argument("--name", default="backend-bot", help="sender id browsers see as `p`")
    ap.add_argument("--say", default="hello from the backend", help="text of the one message to publish")
    ap.add_argument("--messages", type=int, default=0, help="exit after receiving this many messages (0: run until --seconds)")
    ap.add_argument("--seconds", type=float, default=60.0, help="exit after this long at most")
    args = ap.parse_args()

    conf = zenoh.Config()
    conf.insert_json5("mode", '"client"')
    conf.insert_json5("connect/endpoints", json.dumps(args.connect))
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)

    base = f"prscd/{chunk(args.app)}/{chunk(args.channel)}"
    received = threading.Event()
    count = [0]

    def on_message(sample):
        msg = msgpack.unpackb(sample.payload.to_bytes(), raw=False)
        emit(event="message", t=msg.get("t"), op=msg.get("op"), p=msg.get("p"),
             mesh=msg.get("mesh"), c=msg.get("c"), pl=decode_payload(msg.get("pl")))
        count[0] += 1
        if args.messages and count[0] >= args.messages:
            received.set()

    def on_member(sample):
        parts = str(sample.key_expr).split("/")
        mesh_id, _sid, client = (urllib.parse.unquote(p) for p in parts[3:6])
        emit(event="member", alive=sample.kind == zenoh.SampleKind.PUT, client=client, mesh=mesh_id)

    # Remote only: not our own messages back.
    subscriber = session.declare_subscriber(base, on_message, allowed_origin=zenoh.Locality.REMOTE)
    members = session.liveliness().declare_subscriber(f"{base}/*/*/*", on_member, history=True)
    publisher = session.declare_publisher(base, congestion_control=zenoh.CongestionControl.BLOCK)

    # Publish once a node with members in the channel is listening.
    deadline = time.monotonic() + args.seconds

    def matching() -> bool:
        return publisher.matching_status.matching

    while not matching() and time.monotonic() < deadline:
        time.sleep(0.05)
    emit(event="ready", matching=matching())
    if args.say:
        payload = msgpack.packb({"event": "chat", "data": json.dumps({"text": args.say})})
        publisher.put(msgpack.packb({"t": "data", "c": args.channel, "p": args.name, "pl": payload}))
        emit(event="published", text=args.say)

    received.wait(max(0.0, deadline - time.monotonic()))
    subscriber.undeclare()
    members.undeclare()
    publisher.undeclare()
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
