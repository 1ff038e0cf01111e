"""``gateshift-bench``: how much faster and leaner the fused ops are than what users run today.

For each case (an op at a shape, dtype and device) and each implementation

* ``eager``   the published-semantics module (``gateshift.reference``), op for op;
* ``compile`` ``torch.compile`` of that module;
* ``fused``   ours;

on identical inputs and weights, it measures (a network case, ``--network``: a whole
published network of ``gateshift.models``, runs through the same code, plus
``baseline``, the same backbone without temporal modules)

* ``fwd_ms``       a training-mode forward (autograd recording), median over repetitions;
* ``fwd_bwd_ms``   a training-mode forward + backward, median;
* ``infer_ms``     an eval-mode forward under ``torch.no_grad``, median;
* ``speedup_vs_*`` forward+backward time of ``eager``/``compile`` over this one's;
* ``saved_bytes``  bytes autograd keeps for backward (distinct storages, input included);
* ``peak_bytes``   peak device memory of forward + backward above the inputs (CUDA only);
* ``fwd_bw_frac``  the DESIGN.md bandwidth floor of forward (one read of x, one write of
  the output, at the device's copy bandwidth, measured in the same run) over ``fwd_ms``:
  the forward's achieved bandwidth as a fraction of the copy bandwidth. The table calls
  it ``fwd % floor``; it has nothing to do with the backward pass;
* ``fwd_bwd_bw_frac`` the same for forward+backward (JSON and CSV only);
* ``temporal_share``, ``temporal_share_infer`` (network cases) the temporal modules'
  share of a training step and of an inference pass: 1 - baseline's time / this time;
* ``max_abs_err``  the largest difference of the output from ``eager``'s.

Results go to an aligned table and, on request, to JSON, CSV, a PNG plot and
``torch.profiler`` traces. ``python -m gateshift.bench --help`` lists the options.

Modules:

* ``workloads`` what is benchmarked: ops, shapes, presets, the cases built from them;
* ``timing``    the instruments: individually timed calls (``torch.utils.benchmark``'s
  synchronising clock, Python's ``timeit``), copy bandwidth, bytes saved for backward,
  peak memory, profiler traces;
* ``runner``    one case's implementations on the same inputs, and the run over all
  cases (with a ``tqdm`` progress bar); a :class:`Record` per (case, implementation);
* ``report``    the table, JSON, CSV, plot, and the Markdown summary of JSON files
  (``benchmarks/summarize.py``);
* ``cli``       the command line.
"""

from gateshift.bench.cli import main, parse_args
from gateshift.bench.runner import Record, benchmark_workload
from gateshift.bench.timing import copy_bandwidth
from gateshift.bench.workloads import NETWORKS, OPS, Shape, network_workload, op_workload

__all__ = [
    "NETWORKS",
    "OPS",
    "Record",
    "Shape",
    "benchmark_workload",
    "copy_bandwidth",
    "main",
    "network_workload",
    "op_workload",
    "parse_args",
]
