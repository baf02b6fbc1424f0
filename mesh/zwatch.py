#!/usr/bin/env python3
"""Watch prscd traffic on the zenoh mesh: channel messages, joins and leaves, nodes.

    $PRSCD_TOOLS/venv/bin/python mesh/zwatch.py --connect tcp/127.0.0.11:7447
    $PRSCD_TOOLS/venv/bin/python mesh/zwatch.py --config RUN_DIR/config/node-us.json5 --app dev

Subscribes (as a zenoh client, or a peer with --mode peer) to `prscd/<app>/**` and
prints every channel message (msgpack Signalling, decoded; a node's `channel_join`
and `peer_offline` are its peers' joins and leaves), and every node token of the
app (`prscd/<app>/@node/<mesh_id>`) appearing or vanishing. Stop with Ctrl-C, or
give --seconds. Needs mesh/install-python.sh.
"""
import argparse
import json
import sys
import time

import msgpack
import zenoh


def show(payload: bytes) -> str:
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except Exception:  # noqa: BLE001 - anything undecodable is shown raw
        return "undecodable " + payload[:64].hex()

    def plain(v):
        if isinstance(v, bytes):
            try:
                return msgpack.unpackb(v, raw=False)  # pl is msgpack itself
            except Exception:  # noqa: BLE001
                return v.hex()
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(obj), default=str, ensure_ascii=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", help="zenoh endpoint to connect to, e.g. tcp/127.0.0.11:7447")
    src.add_argument("--config", help="zenoh JSON5 config to use (listen endpoints are dropped)")
    ap.add_argument("--mode", choices=["client", "peer"], default="client",
                    help="with --connect: zenoh mode (default client)")
    ap.add_argument("--app", default="*", help="app id to watch (default: all apps)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = never)")
    args = ap.parse_args()

    if args.config:
        conf = zenoh.Config.from_file(args.config)
        conf.insert_json5("listen/endpoints", "[]")
    else:
        conf = zenoh.Config()
        conf.insert_json5("mode", json.dumps(args.mode))
        conf.insert_json5("connect/endpoints", json.dumps([args.connect]))
        conf.insert_json5("scouting/multicast/enabled", "false")
        conf.insert_json5("connect/timeout_ms", "5000")
        conf.insert_json5("listen/endpoints", "[]")

    key = f"prscd/{args.app}/**"
    session = zenoh.open(conf)
    t0 = time.monotonic()

    def stamp() -> str:
        return f"{time.monotonic() - t0:8.3f}"

    def on_msg(sample: zenoh.Sample) -> None:
        print(f"{stamp()} msg   {sample.key_expr}  {show(sample.payload.to_bytes())}", flush=True)

    def on_token(sample: zenoh.Sample) -> None:
        what = "up  " if sample.kind == zenoh.SampleKind.PUT else "down"
        print(f"{stamp()} node {what} {sample.key_expr}", flush=True)

    # Joins and leaves are in the traffic (channel_join / peer_offline); a
    # node's token says it serves the app (`@node` is matched by no `**`).
    subs = [
        session.declare_subscriber(key, on_msg),
        session.liveliness().declare_subscriber(f"prscd/{args.app}/@node/*", on_token, history=True),
    ]
    print(f"{stamp()} watching {key} as {session.info.zid()}", file=sys.stderr, flush=True)
    try:
        if args.seconds > 0:
            time.sleep(args.seconds)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for s in subs:
            s.undeclare()
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
