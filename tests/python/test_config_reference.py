"""docs/configuration.md's key tables are exactly `moeq config-reference`'s output: the
configuration reference cannot fall behind the schemas the recipe reader checks against."""
import os
import re
import subprocess

from test_quantize_cli import MOEQ, ROOT


def test_configuration_doc_lists_every_key_as_the_reader_declares_it():
    generated = subprocess.run([MOEQ, "config-reference"], capture_output=True, text=True,
                               check=True).stdout.rstrip("\n")
    doc = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    match = re.search(r"<!-- config-reference: begin \(moeq config-reference\) -->\n(.*?)\n"
                      r"<!-- config-reference: end -->", doc, re.S)
    assert match, "docs/configuration.md lost its generated section"
    assert match.group(1) == generated, "run: moeq config-reference, and paste it into the doc"
    for key in ("export.journal", "quantize.drop_excluded_layers", "calibration.mode"):
        assert f"`{key}`" in generated
