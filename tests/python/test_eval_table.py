"""docs/evaluation.md's table is reproduced by the command it names: tools/eval-table reruns two
of its rows on the default model and prints exactly the rows the doc holds."""
import os
import subprocess
import sys

from test_quantize_cli import ROOT


def test_two_rows_of_the_table_are_reproduced():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval-table"), "--print",
                           "--schemes", "W4A16", "W8A8-FP8"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| W")]
    assert len(rows) == 2
    doc = open(os.path.join(ROOT, "docs", "evaluation.md")).read()
    for row in rows:
        assert row in doc, f"docs/evaluation.md does not hold the reproduced row:\n{row}"
