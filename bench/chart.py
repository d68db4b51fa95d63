#!/usr/bin/env python3
"""bench/chart.py - one SVG from the benchmark's JSON: W3 hand-off latency
and per-process fairness, bidlock beside the peer libraries.

    python3 bench/chart.py BIDLOCK.jsonl PEERS_RAW.jsonl OUT.svg

BIDLOCK.jsonl is what bench/run writes (bench-results/*.jsonl); its W3
lines ("settings" default and tuned) are used. PEERS_RAW.jsonl is the
raw.jsonl of ../shared/peers/run-all.sh (results/<stamp>/raw.jsonl); its
"w3" lines are used (default and aggressive retry). Both should come from
the same machine in the same hour: the chart says which files it read.

Left panel: release issued -> next acquire granted in another process
("B cross"), p50 and p99, in ms on a log scale. Right panel: the smallest
and the largest share of the 2,000 acquisitions that one of the 8
processes got, as min/max (1.0 = perfectly fair). Python's standard
library only; the SVG is written by hand.
"""
import json
import math
import os
import sys


def bidlock_rows(path):
    rows = []
    for line in open(path):
        d = json.loads(line)
        if d.get("workload") != "W3":
            continue
        b = d["handoff_ms"]["B"]["cross"]
        share = d["share"]["min_over_max"]["median"]
        rows.append(("bidlock " + d["settings"], b["p50"]["median"], b["p99"]["median"],
                     share, d["acq_per_s"]["median"]))
    return rows


def peer_rows(path):
    rows = []
    for line in open(path):
        d = json.loads(line)
        if d.get("workload") != "w3":
            continue
        share = d["per_worker_min"] / d["per_worker_max"] if d["per_worker_max"] else 0
        rows.append(("%s %s %s" % (d["lib"], d["version"], d["retry"]),
                     d["cross_relissue_handoff_p50_us"] / 1000.0,
                     d["cross_relissue_handoff_p99_us"] / 1000.0, share, d["acq_per_sec"]))
    return rows


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(rows, sources):
    row_h, top, left = 26, 70, 340
    pw = 330  # panel width
    gap = 60
    h = top + row_h * len(rows) + 70
    w = left + pw + gap + pw + 30
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">W3 contended hand-off: '
           '8 processes, 1 key, hold 1 ms</text>',
           '<text x="%d" y="52">release &#8594; grant in another process, ms (log): '
           'p50 bar, p99 tick</text>' % left,
           '<text x="%d" y="52">fairness: min / max acquisitions of a process</text>'
           % (left + pw + gap)]
    lo, hi = 0.05, 1000.0

    def lx(v):
        v = min(max(v, lo), hi)
        return left + pw * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    for tick in (0.1, 1, 10, 100, 1000):
        x = lx(tick)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>'
                   % (x, top - 6, x, top + row_h * len(rows)))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g</text>'
                   % (x, top + row_h * len(rows) + 16, tick))
    fx0 = left + pw + gap
    for tick in (0, 0.5, 1.0):
        x = fx0 + pw * tick
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>'
                   % (x, top - 6, x, top + row_h * len(rows)))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g</text>'
                   % (x, top + row_h * len(rows) + 16, tick))
    for i, (name, p50, p99, share, acq) in enumerate(rows):
        y = top + i * row_h
        ours = name.startswith("bidlock")
        colour = "#1f77b4" if ours else "#999"
        out.append('<text x="%d" y="%d" text-anchor="end"%s>%s (%.0f acq/s)</text>'
                   % (left - 8, y + 14, ' font-weight="bold"' if ours else "", esc(name), acq))
        out.append('<rect x="%d" y="%d" width="%.1f" height="16" fill="%s"/>'
                   % (left, y + 2, max(lx(p50) - left, 1), colour))
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black" stroke-width="2"/>'
                   % (lx(p99), y, lx(p99), y + 20))
        out.append('<text x="%.1f" y="%d" fill="#333">%.2f / %.1f</text>'
                   % (min(lx(p99) + 4, left + pw - 60), y + 14, p50, p99))
        out.append('<rect x="%d" y="%d" width="%.1f" height="16" fill="%s"/>'
                   % (fx0, y + 2, max(pw * share, 1), colour))
        out.append('<text x="%.1f" y="%d" fill="#333">%.2f</text>'
                   % (fx0 + pw * share + 4 if share < 0.85 else fx0 + pw * share - 34, y + 14,
                      share))
    out.append('<text x="10" y="%d" fill="#555" font-size="10">%s</text>'
               % (h - 12, esc("data: " + "; ".join(sources))))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    rows = bidlock_rows(sys.argv[1])
    if not rows:
        sys.stderr.write("chart.py: no W3 line in %s\n" % sys.argv[1])
        return 1
    rows += peer_rows(sys.argv[2])
    with open(sys.argv[3], "w") as f:
        f.write(svg(rows, [os.path.basename(sys.argv[1]), os.path.basename(sys.argv[2])]))
    sys.stderr.write("chart.py: %d rows -> %s\n" % (len(rows), sys.argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
