#!/usr/bin/env python3
"""A backend service on the prscd mesh, in the role YoMo source and stream
functions played for the original: it reads a channel's traffic, keeps who
is in it, and writes into it. Browsers in the channel see its messages with
`p` set to its name.

Needs `eclipse-zenoh==1.10.2` and `msgpack` (mesh/install-python.sh makes a
venv with both). Run next to a node that listens for zenoh, e.g.

    ZENOH_LISTEN=tcp/127.0.0.1:7447 cargo run --release
    python3 examples/backend.py --connect tcp/127.0.0.1:7447 --app dev --channel room-1

Key expressions (mesh/README.md):
  prscd/<app>/<channel>                     channel traffic (msgpack Signalling); a node's
                                            `channel_join` / `peer_offline` there say who
                                            joined and left, the sid in the attachment
  prscd/<app>/<channel>/@member/<mesh_id>   query: that node's members of the channel
  prscd/<app>/@node/<mesh_id>               liveliness token while the node serves the app
Chunks are percent-encoded (`%`, `/`, `*`, `$`, `?`, `#`, `@`, controls, space).

Who is in the channel: ask every node for its roster, then follow the joins and
leaves in the traffic; when a node's token goes away, its members are gone.

Output: one JSON line per event on stdout, so that programs (and the test
that runs this example) can read it:
  {"event": "ready"}
  {"event": "member", "alive": true, "client": "alice", "mesh": "eu", "via": "roster"}
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

    app = chunk(args.app)
    base = f"prscd/{app}/{chunk(args.channel)}"
    received = threading.Event()
    count = [0]
    lock = threading.Lock()
    members = {}  # (mesh_id, sid) -> client id

    def member(mesh_id, sid, client, alive, via):
        with lock:
            known = (mesh_id, sid) in members
            if alive and not known:
                members[(mesh_id, sid)] = client
            elif not alive and known:
                del members[(mesh_id, sid)]
            else:
                return
        emit(event="member", alive=alive, client=client, mesh=mesh_id, via=via)

    def sid_of(sample):
        if sample.attachment is None:
            return None
        try:
            return msgpack.unpackb(sample.attachment.to_bytes(), raw=False).get("sid")
        except Exception:
            return None

    def on_message(sample):
        msg = msgpack.unpackb(sample.payload.to_bytes(), raw=False)
        sid = sid_of(sample)
        if msg.get("t") == "control" and sid is not None and msg.get("op") in ("channel_join", "peer_offline"):
            member(msg.get("mesh"), sid, msg.get("p"), msg["op"] == "channel_join", "traffic")
            return
        emit(event="message", t=msg.get("t"), op=msg.get("op"), p=msg.get("p"),
             mesh=msg.get("mesh"), c=msg.get("c"), pl=decode_payload(msg.get("pl")))
        count[0] += 1
        if args.messages and count[0] >= args.messages:
            received.set()

    def on_node(sample):
        if sample.kind != zenoh.SampleKind.DELETE:
            return
        mesh_id = urllib.parse.unquote(str(sample.key_expr).split("/")[-1])
        with lock:
            gone = [(k, c) for k, c in members.items() if k[0] == mesh_id]
        for (mesh, sid), client in gone:
            member(mesh, sid, client, False, "node")

    # Remote only: not our own messages back. Subscribe first, then ask for
    # the rosters: a join in between is in one or the other (or both).
    subscriber = session.declare_subscriber(base, on_message, allowed_origin=zenoh.Locality.REMOTE)
    nodes = session.liveliness().declare_subscriber(f"prscd/{app}/@node/*", on_node)
    for reply in session.get(f"{base}/@member/*"):
        if reply.ok is None:
            continue
        mesh_id = urllib.parse.unquote(str(reply.ok.key_expr).split("/")[-1])
        roster = msgpack.unpackb(reply.ok.payload.to_bytes(), raw=False)
        for m in roster.get("members", []):
            member(mesh_id, m["sid"], m["p"], True, "roster")
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
    nodes.undeclare()
    publisher.undeclare()
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
