"""The model benchmark on tiny cells: every row timed, counted FLOPs turned into
achieved FLOP/s, conservative forces costing more FLOPs than direct ones."""

from __future__ import annotations

from analysis.bench.models import cpu_peak_gflops, run_benchmark


def test_models_benchmark_reports_achieved_flops():
    res = run_benchmark(pairs=("0.1M",), repeats_list=[(1, 1, 1), (2, 1, 1)], threads=1,
                        min_repeats=1, peer_cell=False)
    flops = res["flops_per_atom_forward"]
    assert flops["pet-conservative@0.1M"] > 1.5 * flops["pet-direct@0.1M"] > 0
    assert len(res["results"]) == 2 * 3
    for row in res["results"]:
        assert row["us_per_atom"] > 0 and row["achieved_gflop_per_s"] > 0
        expected = flops[row["model"]] * row["num_atoms"] / row["seconds"] / 1e9
        assert abs(row["achieved_gflop_per_s"] - expected) < 1e-9 * expected
    assert set(res["summary"]["pet-direct@0.1M"]["achieved_gflop_per_s"]) == {4, 8}


def test_cpu_peak_estimate_is_positive_where_readable():
    peak = cpu_peak_gflops(2)
    assert peak is None or peak > 1.0
