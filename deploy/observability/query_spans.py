#!/usr/bin/env python3
"""Print the spans stored in a Phoenix trace store as JSON lines.

Stdlib only (urllib + json); runs with any python3 >= 3.8.

    query_spans.py --http http://127.0.0.1:6006 [--project default]
                   [--trace-id HEX]... [--name NAME]... [--attribute KEY:VALUE]...
                   [--wait-count N [--timeout S]]

One line per span, oldest start first:

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_id": "<16 hex>"|null,
     "name": "...", "start_time": "<ISO-8601 UTC>", "end_time": "<ISO-8601 UTC>",
     "attributes": {"dotted.key": value, ...},
     "events": [{"name": "...", "timestamp": "<ISO>", "attributes": {...}}, ...],
     "status": {"code": "UNSET"|"OK"|"ERROR", "message": "..."}}

Source: Phoenix REST API (arize-phoenix 20.26.1)
    GET {http}/v1/projects/{project}/spans
        ?limit=1000&sort=start_time&order=asc[&cursor=..][&trace_id=..][&name=..][&attribute=k:v]
    -> {"data": [Span...], "next_cursor": str|null}; 404 if the project does not
       exist yet (treated here as "no spans").

Projects: spans land in project "default" unless the OTLP *resource* carries
`openinference.project.name` (gRPC and HTTP) or the OTLP/HTTP request has an
`x-project-name` header. `service.name` does NOT select a project, and Phoenix
does not store resource attributes at all.

--wait-count N polls (every --interval s) until at least N matching spans are
present or --timeout s pass; on timeout it prints what it has and exits 1.
Exit codes: 0 ok, 1 timeout, 2 usage / HTTP / connection error.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def flatten(value, prefix="", out=None):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are kept as values."""
    if out is None:
        out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


class ProjectNotFound(Exception):
    pass


def fetch_all(args):
    base = args.http.rstrip("/")
    path = f"/v1/projects/{urllib.parse.quote(args.project, safe='')}/spans"
    params = [("limit", "1000"), ("sort", "start_time"), ("order", "asc")]
    params += [("trace_id", t.lower()) for t in args.trace_id]
    params += [("name", n) for n in args.name]
    params += [("attribute", a) for a in args.attribute]
    headers = {"Accept": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    spans, cursor = [], None
    while True:
        q = params + ([("cursor", cursor)] if cursor else [])
        req = urllib.request.Request(f"{base}{path}?{urllib.parse.urlencode(q)}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise ProjectNotFound(e.read().decode(errors="replace").strip()) from None
            raise
        spans.extend(body.get("data") or [])
        cursor = body.get("next_cursor")
        if not cursor:
            return spans


def convert(s):
    ctx = s.get("context") or {}
    return {
        "trace_id": ctx.get("trace_id"),
        "span_id": ctx.get("span_id"),
        "parent_id": s.get("parent_id"),
        "name": s.get("name"),
        "start_time": s.get("start_time"),
        "end_time": s.get("end_time"),
        "attributes": flatten(s.get("attributes") or {}),
        "events": [
            {
                "name": e.get("name"),
                "timestamp": e.get("timestamp"),
                "attributes": flatten(e.get("attributes") or {}),
            }
            for e in (s.get("events") or [])
        ],
        "status": {"code": s.get("status_code"), "message": s.get("status_message") or ""},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--http", default="http://127.0.0.1:6006", help="Phoenix HTTP base URL")
    ap.add_argument("--project", default="default", help="project name (default: %(default)s)")
    ap.add_argument("--trace-id", action="append", default=[], help="only this trace (repeatable)")
    ap.add_argument("--name", action="append", default=[], help="only spans with this name (repeatable)")
    ap.add_argument("--attribute", action="append", default=[], metavar="KEY:VALUE",
                    help="server-side attribute filter, e.g. prscd.peer.id:abc (repeatable, ANDed)")
    ap.add_argument("--wait-count", type=int, default=0, metavar="N",
                    help="poll until at least N matching spans exist")
    ap.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="max seconds to wait for --wait-count (default %(default)s)")
    ap.add_argument("--interval", type=float, default=0.25, metavar="S", help="poll interval")
    ap.add_argument("--api-key", default=None, help="bearer token if Phoenix auth is on")
    args = ap.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    missing_project = None
    while True:
        try:
            spans = fetch_all(args)
            missing_project = None
        except ProjectNotFound as e:
            spans, missing_project = [], str(e)
        except (urllib.error.URLError, OSError, ValueError) as e:
            if args.wait_count and time.monotonic() < deadline:
                time.sleep(args.interval)  # server may still be starting
                continue
            print(f"query_spans: {args.http}: {e}", file=sys.stderr)
            return 2
        if len(spans) >= args.wait_count or time.monotonic() >= deadline:
            break
        time.sleep(args.interval)

    out = [convert(s) for s in spans]
    out.sort(key=lambda s: (s["start_time"] or "", s["span_id"] or ""))
    for s in out:
        print(json.dumps(s, sort_keys=False))
    if missing_project:
        print(f"query_spans: {missing_project}", file=sys.stderr)
    if len(out) < args.wait_count:
        print(f"query_spans: timeout after {args.timeout}s: {len(out)} < {args.wait_count} spans",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
