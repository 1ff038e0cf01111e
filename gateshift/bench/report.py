"""Reporting: the aligned table printed after a run, the JSON, CSV and PNG files it can
write, and the Markdown summary of JSON files (the README's sweep tables,
``benchmarks/summarize.py``).

JSON keys and CSV columns are :class:`~gateshift.bench.runner.Record`'s field names,
unchanged since the first results were written; only the table's titles are for people.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Sequence

from gateshift.bench.runner import Record, network_repeat
from gateshift.bench.workloads import IMPLS

# (Record attribute, column title, format). "fwd % floor" is fwd_bw_frac: the forward's
# bandwidth floor time over its measured time, i.e. the bandwidth it achieves (counting
# only the bytes it must move) as a fraction of the copy bandwidth.
TABLE_COLUMNS = [
    ("op", "op", "{}"),
    ("shape", "B x T x C x H x W", "{}"),
    ("label", "where", "{}"),
    ("impl", "impl", "{}"),
    ("fwd_ms", "fwd ms", "{:.3f}"),
    ("fwd_bwd_ms", "fwd+bwd ms", "{:.3f}"),
    ("infer_ms", "infer ms", "{:.3f}"),
    ("speedup_vs_eager", "x eager", "{:.1f}"),
    ("speedup_vs_compile", "x compile", "{:.1f}"),
    ("saved_mb", "saved MB", "{:.1f}"),
    ("saved_ratio", "saved/x", "{:.2f}"),
    ("fwd_bw_frac", "fwd % floor", "{:.0%}"),
    ("temporal_share", "temporal % step", "{:.0%}"),
    ("temporal_share_infer", "temporal % infer", "{:.0%}"),
    ("matmul_gflops", "sgemm GFLOP/s", "{:.0f}"),
    ("matmul_frac", "fwd % sgemm", "{:.0%}"),
    ("matmul_frac_fwd_bwd", "fwd+bwd % sgemm", "{:.0%}"),
    ("matmul_frac_infer", "infer % sgemm", "{:.0%}"),
    ("fwd_bwd_faults", "faults/step", "{:.0f}"),
    ("max_abs_err", "max err", "{:.1e}"),
]


def _unmeasured(records: Sequence[Record], key: str) -> bool:
    values = [getattr(r, key) for r in records]
    return bool(values) and all(isinstance(v, float) and math.isnan(v) for v in values)


def format_table(records: Sequence[Record]) -> str:
    # A column nothing in this run measured (the networks' temporal share in an op-only run,
    # the sgemm fractions without --roofline) is left out.
    columns = [c for c in TABLE_COLUMNS if not _unmeasured(records, c[0])]
    header = [title for _, title, _ in columns]
    rows = []
    for r in records:
        row = []
        for key, _, fmt in columns:
            value = getattr(r, key)
            row.append("-" if isinstance(value, float) and math.isnan(value) else fmt.format(value))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _nan_to_null(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: str, records: Sequence[Record], meta: dict) -> None:
    # Strict JSON: a figure that does not apply (NaN in the record) is written as null,
    # as NaN is no JSON value and strict parsers (jq, JavaScript's JSON.parse) refuse it.
    rows = [{k: _nan_to_null(v) for k, v in dataclasses.asdict(r).items()} for r in records]
    with open(path, "w") as f:
        json.dump({"meta": {k: _nan_to_null(v) for k, v in meta.items()}, "records": rows}, f, indent=2,
                  allow_nan=False)


def write_csv(path: str, records: Sequence[Record]) -> None:
    fields = [f.name for f in dataclasses.fields(Record)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in records:
            writer.writerow(dataclasses.asdict(r))


def write_plot(path: str, records: Sequence[Record]) -> None:
    """Forward+backward speed-up of each fused case and what each implementation keeps
    for backward, side by side, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    fused = [r for r in records if r.impl == "fused"]
    by_key = {(r.op, r.shape, r.dtype, r.impl): r for r in records}
    names = [f"{r.op} {r.label or r.shape}" for r in fused]
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(fused) + 4), 4.5))
    for i, base in enumerate(("eager", "compile")):
        speed = [
            by_key[(r.op, r.shape, r.dtype, base)].fwd_bwd_ms / r.fwd_bwd_ms
            if (r.op, r.shape, r.dtype, base) in by_key
            else math.nan
            for r in fused
        ]
        ax_speed.bar([j + 0.4 * i for j in range(len(fused))], speed, width=0.4, label=f"vs {base}")
    ax_speed.set_ylabel("forward+backward speed-up (x)")
    ax_speed.set_xticks([j + 0.2 for j in range(len(fused))], names, rotation=60, ha="right", fontsize=7)
    ax_speed.legend()
    impls = [i for i in IMPLS if any(r.impl == i for r in records)]
    for i, impl in enumerate(impls):
        ratio = [
            by_key[(r.op, r.shape, r.dtype, impl)].saved_ratio if (r.op, r.shape, r.dtype, impl) in by_key else 0
            for r in fused
        ]
        ax_mem.bar([j + i / (len(impls) + 1) for j in range(len(fused))], ratio, width=1 / (len(impls) + 1), label=impl)
    ax_mem.set_ylabel("saved for backward / input size")
    ax_mem.set_xticks(range(len(fused)), names, rotation=60, ha="right", fontsize=7)
    ax_mem.legend()
    fig.suptitle(f"gateshift-bench on {records[0].device}, {records[0].dtype}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_summary(paths: Sequence[str]) -> str:
    """One Markdown table per JSON file written by ``--json``: a row per case with the
    forward+backward medians of each implementation, the fused op's speed-ups, and what
    eager and fused keep for backward relative to their input."""
    lines = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        # null (or NaN, in files of older versions) is a figure that does not apply.
        records = [{k: math.nan if v is None else v for k, v in r.items()} for r in data["records"]]
        lines += _markdown_table(data["meta"], records)
        lines.append("")
    return "\n".join(lines)


def _markdown_table(meta: dict, records: Sequence[dict]) -> list[str]:
    # Records are read as the dicts the JSON holds, by field name, so files written by
    # any version of the benchmark summarise alike.
    cases: dict[tuple, dict] = defaultdict(dict)
    for r in records:
        cases[(r["op"], r["shape"], r["label"])][r["impl"]] = r
    networks = {key: by_impl for key, by_impl in cases.items() if "baseline" in by_impl}
    op_cases = {key: by_impl for key, by_impl in cases.items() if key not in networks}
    lines = _op_table(meta, op_cases) if op_cases else []
    if networks:
        lines += [""] if lines else []
        lines += _network_table(meta, networks, titled=bool(lines))
    return lines


def _title(meta: dict, networks: bool = False) -> str:
    medians = f"{network_repeat(meta['repeat'])} interleaved rounds" if networks else meta["repeat"]
    layout = ", channels_last" if meta.get("memory_format") == "channels_last" else ""  # absent from older files
    return f"`{meta['command']}` ({meta['device']}, {meta['dtype']}{layout}, medians of {medians}):"


def _network_table(meta: dict, cases: dict[tuple, dict], titled: bool) -> list[str]:
    """Whole networks: a training step and an inference pass with the published modules
    and with ours, what autograd keeps, and the temporal modules' share of the step."""

    def value(r: dict | None, key: str, fmt: str, scale: float = 1) -> str:
        return "-" if r is None or math.isnan(r[key]) else fmt.format(r[key] / scale)

    def ratio(a: dict | None, b: dict | None, key: str) -> str:
        return "-" if a is None or b is None else f"{a[key] / b[key]:.2f}"

    lines = [] if titled else [_title(meta, networks=True), ""]
    lines += [
        "| network | clips x T x 3 x H x W | step ms, published | step ms, fused | x | inference ms, published "
        "| inference ms, fused | x | saved MB, published | saved MB, fused | temporal share of step, published "
        "| temporal share of step, fused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (op, shape, _), by_impl in cases.items():
        eager, fused = by_impl.get("eager"), by_impl.get("fused")
        lines.append(
            f"| {op} | {shape} | {value(eager, 'fwd_bwd_ms', '{:.0f}')} | {value(fused, 'fwd_bwd_ms', '{:.0f}')} "
            f"| {ratio(eager, fused, 'fwd_bwd_ms')} | {value(eager, 'infer_ms', '{:.0f}')} "
            f"| {value(fused, 'infer_ms', '{:.0f}')} | {ratio(eager, fused, 'infer_ms')} "
            f"| {value(eager, 'saved_bytes', '{:.0f}', 2**20)} | {value(fused, 'saved_bytes', '{:.0f}', 2**20)} "
            f"| {value(eager, 'temporal_share', '{:.0%}')} | {value(fused, 'temporal_share', '{:.0%}')} |"
        )
    return lines


def _op_table(meta: dict, cases: dict[tuple, dict]) -> list[str]:
    def ms(r: dict | None) -> str:
        return f"{r['fwd_bwd_ms']:.2f}" if r is not None else "-"

    def speedup(base: dict | None, fused: dict | None) -> str:
        return f"{base['fwd_bwd_ms'] / fused['fwd_bwd_ms']:.1f}" if base is not None and fused is not None else "-"

    def saved(r: dict | None) -> str:
        return f"{r['saved_ratio']:.2f}" if r is not None and not math.isnan(r["saved_ratio"]) else "-"

    lines = [
        _title(meta),
        "",
        "| op | where | B x T x C x H x W | eager ms | compile ms | fused ms | x eager | x compile "
        "| saved/x eager | saved/x fused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (op, shape, label), by_impl in cases.items():
        fused, eager, comp = by_impl.get("fused"), by_impl.get("eager"), by_impl.get("compile")
        lines.append(
            f"| {op} | {label or '-'} | {shape} | {ms(eager)} | {ms(comp)} | {ms(fused)} | {speedup(eager, fused)} "
            f"| {speedup(comp, fused)} | {saved(eager)} | {saved(fused)} |"
        )
    return lines
