#!/usr/bin/env python3
"""Renders a bench/suite.sh (or bench/multinode.sh) results directory:
report.md (tables, ratios, targets) and two SVG charts (latency percentiles
vs offered load, server RSS vs connections). Standard library only.

    python3 bench/report.py RESULTS_DIR
"""
import glob
import json
import math
import os
import re
import statistics
import sys

SERVERS = ["prscd", "ceiling", "uws", "node-ws", "socketio"]
FANOUT_SERVERS = ["prscd", "ceiling", "ceiling-frames", "uws", "uws-frames", "node-ws", "socketio"]
COLORS = {"prscd": "#d62728", "ceiling": "#1f77b4", "uws": "#ff7f0e", "node-ws": "#2ca02c", "socketio": "#9467bd"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def runs(out, pattern):
    return [r for r in (load(p) for p in sorted(glob.glob(os.path.join(out, pattern)))) if r]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        v = round(v)
    if digits:
        return f"{v:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


def ms(us):
    return None if us is None else us / 1000.0


def ratio(a, b):
    return None if not a or not b else a / b


def steal(r, phase="traffic"):
    """Share of the time the guest wanted a CPU that the hypervisor took
    during a run's phase, in % (None in results from before the tool kept it)."""
    m = ((r.get("machine") or {}).get(phase)) or {}
    return None if m.get("steal_share") is None else 100 * m["steal_share"]


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def svg_chart(path, title, xlabel, ylabel, series, logy=False, xfmt=str, yfmt=str):
    """series: [(label, color, dash, [(x, y), ...])]"""
    W, H, L, R, T, B = 760, 440, 80, 170, 40, 55
    pts = [p for _, _, _, s in series for p in s if p[1] is not None and (not logy or p[1] > 0)]
    if not pts:
        return
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x1 = x0 + 1
    if logy:
        y0 = 10 ** math.floor(math.log10(min(ys)))
        y1 = 10 ** math.ceil(math.log10(max(ys)))
        ty = lambda y: math.log10(y)
    else:
        y0, y1 = 0, max(ys) * 1.1
        ty = lambda y: y
    sx = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    sy = lambda y: H - B - (ty(y) - ty(y0)) / (ty(y1) - ty(y0)) * (H - T - B)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
         f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
         f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">{xlabel}</text>',
         f'<text x="18" y="{(T+H-B)/2}" text-anchor="middle" transform="rotate(-90 18 {(T+H-B)/2})">{ylabel}</text>']
    ticks = []
    if logy:
        e = int(math.log10(y0))
        while 10 ** e <= y1:
            ticks.append(10 ** e)
            e += 1
    else:
        step = 10 ** math.floor(math.log10(y1 / 5)) if y1 > 0 else 1
        while y1 / step > 8:
            step *= 2
        t = 0
        while t <= y1:
            ticks.append(t)
            t += step
    for t in ticks:
        y = sy(t)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W-R}" y2="{y:.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L-6}" y="{y+4:.1f}" text-anchor="end">{yfmt(t)}</text>')
    for x in sorted(set(xs)) if len(set(xs)) <= 8 else [x0 + i * (x1 - x0) / 5 for i in range(6)]:
        o.append(f'<text x="{sx(x):.1f}" y="{H-B+16}" text-anchor="middle">{xfmt(x)}</text>')
    for i, (label, color, dash, s) in enumerate(series):
        s = [p for p in s if p[1] is not None and (not logy or p[1] > 0)]
        if not s:
            continue
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        da = ' stroke-dasharray="5,4"' if dash else ""
        o.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{da}/>')
        if len(s) <= 12:
            for x, y in s:
                o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        ly = T + 14 + i * 18
        o.append(f'<line x1="{W-R+10}" y1="{ly-4}" x2="{W-R+34}" y2="{ly-4}" stroke="{color}" stroke-width="2"{da}/>')
        o.append(f'<text x="{W-R+40}" y="{ly}">{label}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def fanout_max(out, prefix, in_rounds, label, md):
    """The max-rate fan-out table of runs named PREFIX-SERVER-ROUND.json.
    ceiling-frames: the ceiling relaying the bytes prscd delivers. Returns
    the medians per server and the per-round ratio function."""
    fan, fan_rounds = {}, {}
    for s in FANOUT_SERVERS:
        paths = sorted(glob.glob(os.path.join(out, f"{prefix}-{s}-[0-9]*.json")))
        pairs = [(p, r) for p, r in ((p, load(p)) for p in paths) if r]
        if not pairs:
            continue
        rs = [r for _, r in pairs]
        fan_rounds[s] = {int(re.search(r"-(\d+)\.json$", p).group(1)): r["delivery"]["msgs_per_s"]
                         for p, r in pairs}
        sp = [r.get("server_process") or {} for r in rs]
        fan[s] = {
            "rate": med([r["delivery"]["msgs_per_s"] for r in rs]),
            "all": [r["delivery"]["msgs_per_s"] for r in rs],
            # Traffic only (after the joins) where the run has it.
            "cpu": med([x.get("traffic_cpu_us_per_delivery", x.get("cpu_us_per_delivery")) for x in sp]),
            "client_cpu": med([r["client"]["traffic_cpu_s"] * 1e6 / r["delivery"]["delivered"]
                               if r["delivery"]["delivered"] and r["client"].get("traffic_cpu_s") else None
                               for r in rs]),
            "p50": med([(r["latency_us"] or {}).get("p50") for r in rs]),
            "p99": med([(r["latency_us"] or {}).get("p99") for r in rs]),
            "lost": sum(r["delivery"]["lost"] for r in rs),
            "subs": rs[0]["params"]["members"],
        }

    def round_ratios(other):
        if not in_rounds:
            return []
        a, b = fan_rounds.get("prscd", {}), fan_rounds.get(other, {})
        return [a[k] / b[k] for k in sorted(set(a) & set(b)) if b[k]]

    if fan:
        subs = next(iter(fan.values()))["subs"]
        md.append(f"### Fan-out: 1 publisher → {subs:,} subscribers, 100-byte payloads, max rate ({label})\n")
        rows = []
        for s, v in fan.items():
            rr = round_ratios(s)
            by_round = f"{med(rr):.2f}× ({min(rr):.2f}–{max(rr):.2f})" if rr and s != "prscd" else ""
            rows.append([s, fmt(v["rate"]), " / ".join(fmt(x) for x in v["all"]), fmt(v["cpu"], 2),
                         fmt(v["client_cpu"], 2), fmt(ms(v["p50"]), 1), fmt(ms(v["p99"]), 1), v["lost"],
                         fmt(ratio(fan.get("prscd", {}).get("rate"), v["rate"]), 2) + "×", by_round])
        md.append(table(["server", "delivered msg/s (median)", "runs, round by round" if in_rounds else "runs",
                         "server CPU µs/delivery", "client CPU µs/delivery",
                         "p50 ms", "p99 ms", "lost", "prscd ÷ this (medians)",
                         "prscd ÷ this, per round: median (range)"], rows))
        md.append("`ceiling-frames` is the ceiling relaying the exact bytes a prscd node delivers "
                  "(`{t, c, p, pl, mesh}`, 144 bytes, against the bare 100-byte payload): same frames on "
                  "the wire, no prscd. CPU per delivery is over the traffic only (from the first "
                  "message to the last delivery, after a 1 s settle). "
                  "Latency at max rate is queueing inside the publisher's window (100 messages in flight); "
                  "compare throughput here and latency at fixed rates below.\n")
    return fan, round_ratios


MULTI_KINDS = ["prscd-p2p", "prscd-router", "socketio-redis"]


def multinode(out, md, rows):
    """bench/multinode.sh's tables (three nodes of each kind), and its
    targets into `rows`."""
    got = {(sc, k): load(os.path.join(out, f"{sc}-{k}.json"))
           for sc in ["cross-max", "cross-rate", "rooms"] for k in MULTI_KINDS}
    if not any(got.values()):
        return
    titles = {"cross-max": "Cross-node fan-out at max rate: publisher on node A, subscribers on B and C",
              "cross-rate": "Cross-node fan-out at a fixed rate: publisher on node A, subscribers on B and C",
              "rooms": "Many rooms across three nodes: rooms of 9, three members on each node, 1 msg/s each"}
    for sc, title in titles.items():
        trs = []
        for k in MULTI_KINDS:
            r = got[(sc, k)]
            if not r:
                continue
            d, lat = r["delivery"], r.get("latency_us") or {}
            sp = r.get("server_process") or {}
            trs.append([k, f"{d['delivered']:,}", fmt(d["msgs_per_s"]), fmt(ms(lat.get("p50")), 2),
                        fmt(ms(lat.get("p99")), 2), d.get("lost", 0),
                        fmt(sp.get("traffic_cpu_us_per_delivery", sp.get("cpu_us_per_delivery")), 2)])
        if trs:
            md.append(f"### {title}\n")
            md.append(table(["three nodes of", "delivered", "msg/s", "p50 ms", "p99 ms", "lost",
                             "node B CPU µs/delivery"], trs))
    sio_max, sio_rate = got[("cross-max", "socketio-redis")], got[("cross-rate", "socketio-redis")]
    for k in ["prscd-p2p", "prscd-router"]:
        pmax, prate = got[("cross-max", k)], got[("cross-rate", k)]
        if pmax and sio_max and sio_max["delivery"]["msgs_per_s"]:
            v = pmax["delivery"]["msgs_per_s"] / sio_max["delivery"]["msgs_per_s"]
            rows.append([f"cross-node fan-out ≥ 5× socket.io-redis ({k})", f"{v:.2f}×",
                         "met" if v >= 5 else "NOT met"])
        p99 = lambda r: ((r or {}).get("latency_us") or {}).get("p99")
        if p99(prate) and p99(sio_rate):
            v = p99(prate) / p99(sio_rate)
            rows.append([f"cross-node p99 ≤ 0.5× socket.io-redis's, at {prate['params'].get('rate')} msg/s ({k})",
                         f"{v:.2f}× ({p99(prate) / 1000:.2f} / {p99(sio_rate) / 1000:.2f} ms)",
                         "met" if v <= 0.5 else "NOT met"])


def main(out):
    md = []
    machine = open(os.path.join(out, "machine.txt")).read() if os.path.exists(os.path.join(out, "machine.txt")) else ""
    md.append("Machine and run:\n\n```\n" + machine.strip() + "\n```\n")

    # 1. Fan-out at max rate: the client on one thread, then on two.
    # Only suites that ran the fan-out in rounds (every server once per
    # round) say so; earlier ones ran each server's repetitions back to back.
    in_rounds = "fanout: rounds" in machine
    fan, round_ratios = fanout_max(out, "fanout-max", in_rounds, "client: 1 thread", md)
    fan2, round_ratios2 = fanout_max(out, "fanout-max2", in_rounds, "client: 2 threads", md)

    # 2. Latency vs offered load.
    load_rows, series = [], []
    for s in SERVERS:
        pts50, pts99 = [], []
        for r in runs(out, f"fanout-load-{s}-*.json"):
            rate = r["params"]["rate"]
            subs = r["params"]["members"]
            l = r["latency_us"] or {}
            load_rows.append((s, rate, [s, fmt(rate), fmt(rate * subs), fmt(r["delivery"]["msgs_per_s"]),
                                        fmt(ms(l.get("p50")), 2), fmt(ms(l.get("p99")), 2),
                                        fmt(ms(l.get("p999")), 2), fmt(ms(l.get("max")), 1),
                                        r["delivery"]["lost"], fmt((r.get("server_process") or {}).get("cpu_us_per_delivery"), 2),
                                        fmt(steal(r))]))
            pts50.append((rate * subs, l.get("p50")))
            pts99.append((rate * subs, l.get("p99")))
        if pts50:
            series.append((f"{s} p99", COLORS[s], False, sorted(pts99)))
            series.append((f"{s} p50", COLORS[s], True, sorted(pts50)))
    if load_rows:
        md.append("### Fan-out latency vs offered load (same subscribers, fixed publish rate)\n")
        load_rows.sort(key=lambda x: (SERVERS.index(x[0]), x[1]))
        md.append(table(["server", "msg/s offered", "deliveries/s offered", "delivered msg/s", "p50 ms", "p99 ms",
                         "p99.9 ms", "max ms", "lost", "server CPU µs/delivery", "host steal %"], [r[2] for r in load_rows]))
        svg_chart(os.path.join(out, "latency-vs-load.svg"),
                  "Fan-out latency vs offered load (TLS WebSocket, 2 cores, loopback)",
                  "offered deliveries per second", "end-to-end latency (µs, log)", series, logy=True,
                  xfmt=lambda x: f"{x/1000:.0f}k", yfmt=lambda y: f"{y:,.0f}")
        md.append("![latency vs offered load](latency-vs-load.svg)\n")

    # 3. Many rooms.
    rows = []
    for s in SERVERS:
        r = load(os.path.join(out, f"rooms-{s}.json"))
        if not r:
            continue
        l, sp = r["latency_us"] or {}, r.get("server_process") or {}
        rows.append([s, r["setup"]["joined"], fmt(r["setup"]["conn_per_s"]), fmt(r["delivery"]["msgs_per_s"]),
                     fmt(ms(l.get("p50")), 2), fmt(ms(l.get("p99")), 2), fmt(ms(l.get("max")), 1),
                     r["delivery"]["lost"], fmt(sp.get("cpu_s"), 2), fmt((sp.get("rss_kb") or {}).get("end"))])
    if rows:
        md.append("### Many rooms: rooms of 10, every member publishing 1 msg/s\n")
        md.append(table(["server", "connections", "setup conn/s", "delivered msg/s", "p50 ms", "p99 ms", "max ms",
                         "lost", "server CPU s", "server RSS kB"], rows))

    # 4. Idle memory + chart.
    rows, series = [], []
    for s in SERVERS:
        r = load(os.path.join(out, f"idle-{s}.json"))
        if not r:
            continue
        sp = r.get("server_process") or {}
        rows.append([s, r["setup"]["joined"], fmt(sp.get("rss_kb_per_conn"), 2), fmt((sp.get("rss_kb") or {}).get("settled")),
                     fmt(r["setup"]["conn_per_s"]), "yes" if r["complete"] else "NO: " + str(r.get("stopped_by"))])
        pts = [(c, kb / 1024) for c, kb in sp.get("rss_series") or []]
        series.append((s, COLORS[s], False, pts))
    if rows:
        md.append("### Idle TLS WebSocket connections: server memory\n")
        md.append(table(["server", "connections", "RSS kB per connection", "RSS kB settled", "setup conn/s", "complete"], rows))
        svg_chart(os.path.join(out, "rss-vs-connections.svg"), "Server RSS vs idle TLS WebSocket connections",
                  "connections", "server RSS (MiB)", series, xfmt=lambda x: f"{x/1000:.0f}k", yfmt=lambda y: f"{y:,.0f}")
        md.append("![RSS vs connections](rss-vs-connections.svg)\n")

    # 5. Connect storm.
    rows = []
    for tls, prefix in [("full handshake", "storm"), ("resumed", "storm-resume")]:
        for s in SERVERS:
            r = load(os.path.join(out, f"{prefix}-{s}.json"))
            if not r:
                continue
            sp = r.get("server_process") or {}
            joined = r["setup"]["joined"] or 1
            cpu = sp.get("cpu_s")
            # Older results do not count resumed handshakes.
            resumed = r["setup"].get("tls_resumed")
            rows.append([s, tls, r["setup"]["joined"], "" if resumed is None or prefix == "storm" else resumed,
                         fmt(r["setup"]["conn_per_s"]),
                         fmt(None if cpu is None else cpu * 1e6 / joined), fmt(r["client"]["cpu_s"], 2),
                         fmt(steal(r, "setup"))])
    if rows:
        md.append("### Connect storm: TLS connect + join, 256 at a time (client: 2 threads)\n")
        md.append(table(["server", "TLS", "connections", "resumed", "connect+join /s", "server CPU µs per connection",
                         "client CPU s", "host steal %"], rows))

    # 6. Transports.
    rows = []
    for t in ["ws", "datagram"]:
        r = load(os.path.join(out, f"fanout-transport-{t}.json"))
        if r:
            l = r["latency_us"] or {}
            rows.append([t, r["params"]["members"], r["params"]["rate"], fmt(ms(l.get("p50")), 2), fmt(ms(l.get("p99")), 2),
                         fmt(ms(l.get("max")), 1), f'{r["delivery"]["lost"]} of {r["delivery"]["expected"]}'])
    if rows:
        md.append("### prscd: WebSocket vs WebTransport datagrams (fan-out)\n")
        md.append(table(["transport", "subscribers", "msg/s", "p50 ms", "p99 ms", "max ms", "lost"], rows))

    # 7. The zenoh hop.
    rows = []
    hop = {}
    for kind in ["light", ""]:
        for where in ["same", "cross"]:
            name = f"hop-{kind + '-' if kind else ''}{where}-*.json"
            rs = runs(out, name)
            if rs:
                lat = [r["latency_us"] for r in rs if r["latency_us"]]
                hop[(kind, where)] = {"p50": med([l["p50"] for l in lat]), "p99s": [l["p99"] for l in lat],
                                      "p99": med([l["p99"] for l in lat]), "runs": len(rs),
                                      "rate": rs[0]["params"]["rate"], "members": rs[0]["params"]["members"],
                                      "steal": med([steal(r) for r in rs])}
    for kind in ["light", ""]:
        if (kind, "same") in hop and (kind, "cross") in hop:
            s, c = hop[(kind, "same")], hop[(kind, "cross")]
            rows.append([f"{s['rate']:g} msg/s to {s['members']:,}" + (" (50% of max)" if not kind else ""), c["runs"],
                         fmt(ms(s["p50"]), 2), fmt(ms(c["p50"]), 2), fmt(ms(c["p50"] - s["p50"]), 2),
                         fmt(ms(s["p99"]), 2), fmt(ms(c["p99"]), 2), fmt(ms(c["p99"] - s["p99"]), 2),
                         f"{fmt(s['steal'])} / {fmt(c['steal'])}"])
    if rows:
        md.append("### The zenoh hop: subscribers on node B; publisher on B (same node) or on A (cross node)\n")
        md.append(table(["load", "runs", "same p50 ms", "cross p50 ms", "hop adds p50", "same p99 ms", "cross p99 ms",
                         "hop adds p99", "host steal %, same / cross (median)"], rows))
    # Run by run at light load, where the tail is a few scheduling delays:
    # how much CPU the hypervisor took during each run says how far to trust it.
    pairs = [(load(p), load(p.replace("-same-", "-cross-")))
             for p in sorted(glob.glob(os.path.join(out, "hop-light-same-*.json")),
                             key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))]
    pairs = [(s, c) for s, c in pairs if s and c and s["latency_us"] and c["latency_us"]]
    if len(pairs) > 1:
        md.append("Light load, run by run (same-node run, then cross-node run):\n")
        md.append(table(["run", "same p99 ms", "host steal % (same)", "cross p99 ms", "host steal % (cross)",
                         "hop adds p99"],
                        [[i + 1, fmt(ms(s["latency_us"]["p99"]), 2), fmt(steal(s)), fmt(ms(c["latency_us"]["p99"]), 2),
                          fmt(steal(c)), fmt(ms(c["latency_us"]["p99"] - s["latency_us"]["p99"]), 2)]
                         for i, (s, c) in enumerate(pairs)]))

    # 8. Node death.
    r = load(os.path.join(out, "node-death.json"))
    if r and r.get("kill_to_last_peer_offline_ms"):
        d = r["kill_to_last_peer_offline_ms"]
        md.append("### Node death: kill -9 → last `peer_offline` on the other nodes\n")
        md.append(table(["nodes", "clients per node", "trials", "min ms", "median ms", "max ms"],
                        [[r["params"]["nodes"], r["params"]["clients_per_node"], d["trials"], d["min"], d["median"], d["max"]]]))

    # 9. Targets.
    rows = []
    # Per-round ratios where the runs are in rounds (the machine drifts
    # between rounds); the ratio of medians otherwise.
    for f, rrf, client in [(fan, round_ratios, ""), (fan2, round_ratios2, ", client on 2 threads")]:
        pf = f.get("prscd", {}).get("rate")
        for other, bound, label in [("ceiling", 0.9, "fan-out msg/s ≥ 0.9× ceiling"),
                                    ("ceiling-frames", 1.0, "fan-out msg/s ≥ 1.0× ceiling on prscd's frames (like for like)"),
                                    ("node-ws", 3, "fan-out msg/s ≥ 3× Node ws"),
                                    ("uws-frames", 1.0, "fan-out msg/s ≥ 1.0× uWebSockets.js on prscd's frames")]:
            if not (pf and f.get(other)):
                continue
            rr = rrf(other)
            v = med(rr) if len(rr) >= 2 else pf / f[other]["rate"]
            shown = f"{v:.2f}×" + (f" (rounds {min(rr):.2f}–{max(rr):.2f})" if len(rr) >= 2 else "")
            rows.append([label + client, shown, "met" if v >= bound else "NOT met"])
    half = [x for x in runs(out, "fanout-load-prscd-50.json")]
    if half and half[0]["latency_us"]:
        v = half[0]["latency_us"]["p99"] / 1000
        rows.append(["same-node p99 at 50% of max ≤ 2 ms", f"{v:.2f} ms", "met" if v <= 2 else "NOT met"])
    for kind, label in [("", "zenoh hop adds ≤ 1 ms p99 at that load"),
                        ("light", "zenoh hop adds ≤ 1 ms p99 (light load: 100 msg/s to 10 subscribers)")]:
        if (kind, "same") in hop and (kind, "cross") in hop:
            s, c = hop[(kind, "same")], hop[(kind, "cross")]
            v = (c["p99"] - s["p99"]) / 1000
            # The difference of two medians means little when single runs
            # of the same side differ by more than it.
            spread = max((max(x["p99s"]) - min(x["p99s"])) / 1000 for x in (s, c))
            verdict = "met" if v <= 1 else "NOT met"
            if abs(v) < spread:
                verdict = f"not shown either way (within noise: single runs' p99 spread {spread:.2f} ms)"
            rows.append([label, f"{v:.2f} ms", verdict])
    for s in ["prscd"]:
        r = load(os.path.join(out, f"idle-{s}.json"))
        if r and (r.get("server_process") or {}).get("rss_kb_per_conn") is not None:
            v = r["server_process"]["rss_kb_per_conn"]
            rows.append([f"idle RSS ≤ 8 KiB per TLS WebSocket ({r['setup']['joined']:,} conns)", f"{v:.2f} kB",
                         "met" if v <= 8 else "NOT met"])
            break
    p, u = load(os.path.join(out, "idle-prscd.json")), load(os.path.join(out, "idle-uws.json"))
    pv = ((p or {}).get("server_process") or {}).get("rss_kb_per_conn")
    uv = ((u or {}).get("server_process") or {}).get("rss_kb_per_conn")
    if pv and uv:
        v = pv / uv
        rows.append(["idle memory ≤ 1.0× uWebSockets.js", f"{v:.2f}× ({pv:.2f} / {uv:.2f} kB)",
                     "met" if v <= 1.0 else "NOT met"])
    r = load(os.path.join(out, "storm-prscd.json"))
    if r:
        v = r["setup"]["conn_per_s"]
        rows.append(["TLS connect+join ≥ 3,000/s", f"{v:,.0f}/s", "met" if v >= 3000 else "NOT met"])
        u = load(os.path.join(out, "storm-uws.json"))
        if u and u["setup"].get("conn_per_s"):
            x = v / u["setup"]["conn_per_s"]
            rows.append(["TLS connect+join ≥ 1.0× uWebSockets.js", f"{x:.2f}× ({v:,.0f} / {u['setup']['conn_per_s']:,.0f}/s)",
                         "met" if x >= 1.0 else "NOT met"])
    r = load(os.path.join(out, "node-death.json"))
    if r and r.get("kill_to_last_peer_offline_ms"):
        v = r["kill_to_last_peer_offline_ms"]["max"]
        rows.append(["node-death convergence ≤ 3 s (max of trials)", f"{v:,.0f} ms", "met" if v <= 3000 else "NOT met"])
    multinode(out, md, rows)
    if rows:
        md.insert(1, "### Targets (this run)\n\n" + table(["target", "measured", ""], rows))

    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))
    print(os.path.join(out, "report.md"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
