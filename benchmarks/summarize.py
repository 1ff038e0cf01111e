"""Markdown summary of gateshift-bench JSON files (the README's sweep tables).

    python benchmarks/summarize.py bench-results/cpu-bn-inception.json [...]

One row per case: forward+backward medians of each implementation, the fused
op's speed-ups, and what each keeps for backward relative to its input.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def summarize(paths: list[str]) -> str:
    lines = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = data["meta"]
        cases: dict[tuple, dict] = defaultdict(dict)
        for r in data["records"]:
            cases[(r["op"], r["shape"], r["label"])][r["impl"]] = r
        lines.append(f"`{meta['command']}` ({meta['device']}, {meta['dtype']}, medians of {meta['repeat']}):")
        lines.append("")
        lines.append("| op | where | B x T x C x H x W | eager ms | compile ms | fused ms | x eager | x compile "
                     "| saved/x eager | saved/x fused |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for (op, shape, label), by_impl in cases.items():
            fused, eager, comp = by_impl.get("fused"), by_impl.get("eager"), by_impl.get("compile")

            def ms(r):
                return f"{r['fwd_bwd_ms']:.2f}" if r else "-"

            def ratio(base):
                return f"{base['fwd_bwd_ms'] / fused['fwd_bwd_ms']:.1f}" if base and fused else "-"

            def saved(r):
                return f"{r['saved_ratio']:.2f}" if r and r["saved_ratio"] == r["saved_ratio"] else "-"

            lines.append(f"| {op} | {label or '-'} | {shape} | {ms(eager)} | {ms(comp)} | {ms(fused)} | {ratio(eager)} "
                         f"| {ratio(comp)} | {saved(eager)} | {saved(fused)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(summarize(sys.argv[1:]))
