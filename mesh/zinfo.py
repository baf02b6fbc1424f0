#!/usr/bin/env python3
"""Ask a zenoh router who it is connected to (its admin space), as a zenoh client.

    $PRSCD_TOOLS/venv/bin/python mesh/zinfo.py --connect tcp/127.0.0.11:7447
    $PRSCD_TOOLS/venv/bin/python mesh/zinfo.py --config RUN_DIR/config/node-eu.json5

Prints one line per router reachable through that router: its zid, metadata name,
and its sessions (zid, whatami, link). Needs eclipse-zenoh==1.10.2
(mesh/install-python.sh). zenohd enables its admin space read-only by default.
Exit status 1 if the router cannot be reached in time.
"""
import argparse
import json
import sys

import zenoh


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", help="router endpoint, e.g. tcp/127.0.0.11:7447")
    src.add_argument("--config", help="zenoh JSON5 config to connect with (e.g. a node's); mode is forced to client")
    ap.add_argument("--timeout", type=float, default=3.0, help="query timeout, seconds")
    ap.add_argument("--json", action="store_true", help="print the raw admin JSON")
    args = ap.parse_args()

    if args.config:
        conf = zenoh.Config.from_file(args.config)
    else:
        conf = zenoh.Config()
        conf.insert_json5("mode", '"client"')
        conf.insert_json5("connect/endpoints", json.dumps([args.connect]))
        conf.insert_json5("scouting/multicast/enabled", "false")
        conf.insert_json5("connect/timeout_ms", "5000")
    # never listen, whatever the file says
    conf.insert_json5("listen/endpoints", "[]")

    try:
        session = zenoh.open(conf)
    except Exception as e:  # noqa: BLE001 - report any open failure
        print(f"cannot reach the router: {e}", file=sys.stderr)
        return 1
    try:
        me = str(session.info.zid())
        routers = {}
        for reply in session.get("@/*/router", timeout=args.timeout):
            if reply.ok is None:
                continue
            try:
                routers[str(reply.ok.key_expr)] = json.loads(reply.ok.payload.to_string())
            except ValueError:
                continue
        if args.json:
            print(json.dumps(routers, indent=2, sort_keys=True))
            return 0 if routers else 1
        if not routers:
            print("no router answered on @/*/router", file=sys.stderr)
            return 1
        for key in sorted(routers, key=lambda k: str(routers[k].get("metadata", {}).get("name", k))):
            info = routers[key]
            name = (info.get("metadata") or {}).get("name", "?")
            zid = info.get("zid", key.split("/")[1])
            sessions = []
            for s in info.get("sessions", []):
                if str(s.get("peer")) == me:
                    continue  # this query's own client session
                links = ",".join(
                    str(l.get("dst", l)) if isinstance(l, dict) else str(l)
                    for l in s.get("links", [])
                )
                sessions.append(f"{s.get('whatami', '?')}:{str(s.get('peer', '?'))[:8]}@{links}")
            locators = ",".join(info.get("locators", []))
            print(f"{name} zid={zid} listens={locators} sessions=[{' '.join(sorted(sessions))}]")
        return 0
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
