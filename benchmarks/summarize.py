"""Markdown summary of gateshift-bench JSON files (the README's sweep tables).

    python benchmarks/summarize.py benchmarks/results/cpu-bn-inception.json [...]

One row per case: forward+backward medians of each implementation, the fused
op's speed-ups, and what each keeps for backward relative to its input
(``gateshift.bench.report.markdown_summary``).
"""

import sys

from gateshift.bench.report import markdown_summary

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(markdown_summary(sys.argv[1:]))
