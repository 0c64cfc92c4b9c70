"""Reads run directories and model files; never imports slurm.

``scaling``: scaling-law fits, frontier, plots and report of a study's runs;
``workflows``: evaluation workflows (relax, phonons, symmetry, speed,
practical) as typed functions; ``bench``: the benchmarks of ``make bench``.
Commands: ``python -m analysis relax|phonons|symmetry|speed|practical|scaling``.
"""
