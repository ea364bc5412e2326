"""The nbval comparison up to CPU rounding (``tools/nbcompare.py``)."""

import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import nbcompare  # noqa: E402


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("0.11935750395059586", "0.11935753375291824", True),  # float32 noise in a glue
        ("0.11935750395059586", "0.1193601", False),  # beyond a relative 1e-5
        ("MSE 0.0104 ± 0.0020", "MSE 0.0105 ± 0.0020", True),  # one unit in the last digit
        ("MSE 0.0104 ± 0.0020", "MSE 0.0106 ± 0.0020", False),
        ("16 distinct values", "15 distinct values", False),  # counts are exact
        ("ratio 1.5e-05", "ratio 1.6e-05", True),
        ("ratio 1.5e-05", "ratio 1.7e-05", False),
        ("zero 0.5", "learnable 0.5", False),  # the words must be equal
        ("a 0.5 b", "a 0.5", False),
        ("[1.0, 2.0]", "[1.0, 2.0, 3.0]", False),
    ],
)
def test_same_up_to_rounding(a, b, same):
    assert nbcompare.same_up_to_rounding(a, b) is same
    assert nbcompare.same_up_to_rounding(b, a) is same


def test_align_takes_the_new_text_only_where_it_matches_up_to_rounding():
    def out(plain, record, stream):
        data = {"text/plain": plain, "application/papermill.record/text/plain": record}
        return [
            nbformat.from_dict({"output_type": "stream", "name": "stdout", "text": stream}),
            nbformat.from_dict({"output_type": "display_data", "data": data, "metadata": {}}),
        ]

    ref = out("'a'", "0.11935753375291824", "took 1.5 s, loss 0.250\n")
    test = out("'b'", "0.11935750395059586", "took 9.9 s, loss 0.251\n")
    aligned = nbcompare.align(test, ref, lambda s: s.replace("1.5 s", "T").replace("9.9 s", "T"))
    assert aligned[1]["data"]["application/papermill.record/text/plain"] == "0.11935750395059586"
    assert aligned[1]["data"]["text/plain"] == "'a'"  # a different word stays different
    assert aligned[0]["text"] == "took 9.9 s, loss 0.251\n"  # timings sanitized first
    assert ref[1]["data"]["application/papermill.record/text/plain"] == "0.11935753375291824"
