"""nbval compares each re-executed output with the stored one up to CPU rounding.

See ``tools/nbcompare.py``: numbers may differ in their last bits between machines;
everything else must match exactly, as in plain nbval.
"""

import sys
from pathlib import Path

import nbval.plugin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import nbcompare  # noqa: E402

_exact = nbval.plugin.IPyNbCell.compare_outputs


def _compare_outputs(self, test, ref, skip_compare=None):
    skip = tuple(skip_compare or self.parent.skip_compare) + nbcompare.SKIP
    return _exact(self, test, nbcompare.align(test, ref, self.sanitize), skip)


nbval.plugin.IPyNbCell.compare_outputs = _compare_outputs
