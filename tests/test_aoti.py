"""torch.export and AOTInductor: a model holding the fused ops compiles to a package whose
graph keeps torch.ops.gateshift.*, and the package runs in a fresh process that imported
gateshift (which registers the ops), for clip counts other than the example's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

import gateshift
from gateshift.tsn import TSNResNet

LOAD = textwrap.dedent("""
    import sys, torch
    import gateshift  # registers torch.ops.gateshift.*, which the package calls
    package, io = sys.argv[1], torch.load(sys.argv[2])
    model = torch._inductor.aoti_load_package(package)
    for x, expected in io:
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    print("ok", len(io))
""")


def test_aoti_package_runs_in_a_fresh_process(tmp_path, gen):
    frames = 4
    net = TSNResNet(gateshift.GSM, num_segments=frames, num_classes=5, widths=(8, 16), stem_channels=8).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, gateshift.GSM):
                m.conv3D.weight.copy_(torch.randn(m.conv3D.weight.shape, generator=gen) * 0.2)
                m.bn.running_var.copy_(torch.rand(m.bn.running_var.shape, generator=gen) + 0.5)
    x = torch.randn(2 * frames, 3, 16, 16, generator=gen)
    clips = torch.export.Dim("clips", min=1)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: frames * clips},))
    assert sum("gateshift.gate_shift_forward" in str(n.target) for n in program.graph.nodes) == 2
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "gsm.pt2"))
    io = []
    for n in (2, 3, 1):
        xi = torch.randn(n * frames, 3, 16, 16, generator=gen)
        with torch.no_grad():
            io.append((xi, net(xi)))
    torch.save(io, tmp_path / "io.pt")
    script = tmp_path / "load.py"
    script.write_text(LOAD)
    result = subprocess.run([sys.executable, str(script), package, str(tmp_path / "io.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok 3"
