"""TensorFlow's native start-up notices are filtered out of stderr; everything else passes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import os, sys
from gallery.vision.tfimport import filtered_stderr
with filtered_stderr():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1796243613.033019    9409 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"W0000 00:00:1796243613.033019    9409 loader.cc:1] a real warning\n")
    print("2026-12-02 10:00:00,000 INFO gallery: a log line meanwhile", file=sys.stderr, flush=True)
print("after", file=sys.stderr, flush=True)
"""


def test_the_filter_drops_absl_notices_and_keeps_the_rest() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert result.stderr.splitlines() == [
        "W0000 00:00:1796243613.033019    9409 loader.cc:1] a real warning",
        "2026-12-02 10:00:00,000 INFO gallery: a log line meanwhile",
        "after",
    ]
