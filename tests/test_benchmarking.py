"""The statistics the performance chapter reads the stored benchmarks with."""

from __future__ import annotations

import numpy as np
import pytest

from reference_impl import benchmarking


def test_paired_ratios_are_taken_round_by_round():
    bare = [1.0, 2.0, 4.0]
    np.testing.assert_allclose(benchmarking.paired_ratios([1.5, 3.0, 6.0], bare), [1.5] * 3)
    with pytest.raises(ValueError, match="same rounds"):
        benchmarking.paired_ratios([1.0, 2.0], bare)


def test_bootstrap_median_interval_covers_the_median_and_narrows_with_rounds():
    rng = np.random.default_rng(0)
    few, many = rng.normal(1.0, 0.1, 10), rng.normal(1.0, 0.1, 1000)
    m, low, high = benchmarking.bootstrap_median(few)
    assert low <= m <= high and m == pytest.approx(np.median(few))
    _, low_many, high_many = benchmarking.bootstrap_median(many)
    assert high_many - low_many < (high - low) / 3
    assert benchmarking.bootstrap_median(few) == (m, low, high)  # seeded


def test_bootstrap_ratio_of_medians():
    rng = np.random.default_rng(1)
    web, package = rng.normal(50.0, 2.0, 8), rng.normal(1.0, 0.05, 60)
    m, low, high = benchmarking.bootstrap_ratio_of_medians(web, package)
    assert m == pytest.approx(np.median(web) / np.median(package))
    assert low < m < high and 40 < low and high < 60
    with pytest.raises(ValueError, match="no values"):
        benchmarking.bootstrap_ratio_of_medians([], package)


def test_results_round_trip(tmp_path):
    tables = {("noisy_cell", "fwd+bwd"): {"bare": [0.1, 0.2], "wrapped": [0.11, 0.21]}}
    prov = benchmarking.provenance({"numpy": np.__version__}, device="gpu", gpu="Some GPU")
    path = tmp_path / "bench.csv"
    n = benchmarking.write_results(
        path, "x", tables, {("noisy_cell", "fwd+bwd"): "bare"}, prov, "s"
    )
    rows = benchmarking.read_results(path)
    assert n == 4 == len(rows)
    assert [float(r["seconds"]) for r in rows] == [0.1, 0.2, 0.11, 0.21]
    assert {r["gpu"] for r in rows} == {"Some GPU"} and {r["device"] for r in rows} == {"gpu"}
    assert {r["baseline"] for r in rows} == {"bare"} and rows[2]["round"] == "0"
