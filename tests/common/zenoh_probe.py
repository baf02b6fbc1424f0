"""A zenoh 1.10.2 client (eclipse-zenoh) that tests point at routers and
nodes to see what the mesh lets it do: one line of JSON per event on stdout.

    python zenoh_probe.py CONFIG.json5 [--sub KEY]... [--get KEY]... [--token KEY]...
                          [--put KEY HEX_PAYLOAD HEX_ATTACHMENT|-]... [--seconds S]

Opens a session with CONFIG (a zenoh config file), prints `open` (with the
number of routers and peers it reached) or `open_failed`, declares the
subscribers and tokens, then until S seconds have passed: puts every --put
every 200 ms and asks every --get once a second, printing each `sample`
and `reply` it gets, then `done`.
"""

import argparse
import json
import sys
import time

import zenoh


def emit(**event):
    print(json.dumps(event), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--sub", action="append", default=[])
    ap.add_argument("--get", action="append", default=[])
    ap.add_argument("--token", action="append", default=[])
    ap.add_argument("--put", nargs=3, action="append", default=[])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    try:
        session = zenoh.open(zenoh.Config.from_file(args.config))
    except Exception as e:  # a refused link: zenoh gives up opening
        emit(event="open_failed", error=str(e))
        return 0
    time.sleep(0.5)
    emit(event="open", routers=len(list(session.info.routers_zid())),
         peers=len(list(session.info.peers_zid())))

    def on_sample(sample):
        emit(event="sample", key=str(sample.key_expr), payload=sample.payload.to_bytes().hex())

    # Remote only: its own puts are not the mesh letting it read.
    subs = [session.declare_subscriber(k, on_sample, allowed_origin=zenoh.Locality.REMOTE) for k in args.sub]
    tokens = [session.liveliness().declare_token(k) for k in args.token]
    emit(event="declared")
    deadline = time.monotonic() + args.seconds
    next_get = 0.0
    while time.monotonic() < deadline:
        for key, payload, attachment in args.put:
            kw = {} if attachment == "-" else {"attachment": bytes.fromhex(attachment)}
            session.put(key, bytes.fromhex(payload), **kw)
        if time.monotonic() >= next_get:
            next_get = time.monotonic() + 1.0
            for key in args.get:
                for reply in session.get(key, timeout=1.0):
                    if reply.ok is not None:
                        emit(event="reply", key=str(reply.ok.key_expr))
        time.sleep(0.2)
    for t in tokens:
        t.undeclare()
    for s in subs:
        s.undeclare()
    session.close()
    emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
