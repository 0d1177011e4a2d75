"""docs/evaluation.md's table is reproduced by the command it names: tools/eval-table reruns two
of its rows on the default model. The weight-only row (W4A16) must come out exactly as the doc
holds it. W8A8-FP8 has a static input scale per projection; with routed-only calibration that
scale depends on which experts the router picks, and a near-tie pick has been seen to flip
between runs (routed KL 0.02293 vs 0.02355), so that row is compared within tolerances."""
import os
import subprocess
import sys

import pytest

from test_quantize_cli import ROOT


def _cells(row):
    return [c.strip().rstrip(" %") for c in row.strip("|").split("|")]


def test_two_rows_of_the_table_are_reproduced():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval-table"), "--print",
                           "--schemes", "W4A16", "W8A8-FP8"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = {_cells(line)[0]: line for line in proc.stdout.splitlines() if line.startswith("| W")}
    assert sorted(rows) == ["W4A16", "W8A8-FP8"]
    doc = open(os.path.join(ROOT, "docs", "evaluation.md")).read()
    assert rows["W4A16"] in doc, f"docs/evaluation.md does not hold:\n{rows['W4A16']}"
    # Only the table between tools/eval-table's markers (other tables have rows per scheme too).
    table = doc.split("<!-- eval-table: begin")[1].split("<!-- eval-table: end -->")[0]
    documented = [line for line in table.splitlines() if line.startswith("| W8A8-FP8 |")]
    assert len(documented) == 1
    got = [float(x) for x in _cells(rows["W8A8-FP8"])[1:]]
    want = [float(x) for x in _cells(documented[0])[1:]]
    # KL all/routed, p99 all/routed, ppl all/routed, top-1 all/routed
    tolerances = [0.0, 0.1, 0.0, 0.15, 0.0, 0.005, 0.0, 0.02]
    for g, w, tol in zip(got, want, tolerances):
        assert g == pytest.approx(w, rel=tol, abs=1e-12), (rows["W8A8-FP8"], documented[0])
