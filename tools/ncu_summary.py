"""A short table of an Nsight Compute run of gateshift's kernels (``ncu --csv --page raw``).

    python tools/ncu_summary.py ncu.csv [--json out.json]

One row per profiled kernel, in launch order: its NVTX range (the case step that
launched it, when ncu ran with --nvtx), duration, DRAM throughput and bytes, achieved
occupancy, shared-memory wavefronts and bank conflicts. Metrics ncu did not collect
show as '-'.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateshift.testing.gpu_profile import short_kernel_name  # noqa: E402

# column title: metric
COLUMNS = {
    "us": "gpu__time_duration.sum",
    "dram %": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram rd MB": "dram__bytes_read.sum",
    "dram wr MB": "dram__bytes_write.sum",
    "L2 MB": "lts__t_bytes.sum",
    "occ %": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "smem wf": "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",
    "conflicts": "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",
    "regs": "launch__registers_per_thread",
    "waves": "launch__waves_per_multiprocessor",
}
# ncu reports each metric in a unit of its own choosing (the CSV's second row).
TO_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
TO_MB = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "B": 1e-6}


def read(path: Path) -> list[dict]:
    text = path.read_text(errors="replace")
    start = text.find('"ID"')  # ncu's own lines (==PROF==) may precede the table
    if start < 0:
        raise SystemExit(f"{path}: no ncu CSV table found")
    rows = list(csv.reader(io.StringIO(text[start:])))
    header, units, data = rows[0], rows[1], rows[2:]
    nvtx = next((i for i, h in enumerate(header) if "NVTX" in h or "Push/Pop" in h), None)
    out = []
    for row in data:
        if len(row) != len(header):
            continue
        cell = dict(zip(header, row))
        # The NVTX cell reads '<pid> "<default domain>:<range>:none:...' (ncu --nvtx).
        ranges = re.findall(r"<default domain>:([^:]*)", row[nvtx]) if nvtx is not None else []
        rec = {"id": cell.get("ID"), "kernel": short_kernel_name(cell.get("Kernel Name", "?")),
               "range": ranges[-1] if ranges else ""}
        for title, metric in COLUMNS.items():
            if metric not in cell or cell[metric] in ("", "n/a"):
                rec[title] = None
                continue
            value = float(cell[metric].replace(",", ""))
            unit = units[header.index(metric)]
            if title == "us":
                value *= TO_US.get(unit, 1.0)
            elif "MB" in title:
                value *= TO_MB.get(unit, 1.0)
            rec[title] = value
        out.append(rec)
    return out


def format_rows(records: list[dict]) -> str:
    lines = [f"{'range':<22} {'kernel':<46}" + "".join(f"{t:>11}" for t in COLUMNS)]
    for r in records:
        cells = "".join(f"{'-':>11}" if r[t] is None else f"{r[t]:>11.1f}" for t in COLUMNS)
        lines.append(f"{r['range'][:22]:<22} {r['kernel'][:46]:<46}{cells}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    records = read(args.csv)
    print("# MEASURED by Nsight Compute (one replayed launch each, caches flushed between passes)")
    print(format_rows(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
