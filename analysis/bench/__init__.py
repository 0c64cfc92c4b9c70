"""Benchmarks behind ``make bench``: data pipeline, models, training loop, corrections.

``python -m analysis.bench`` runs them all; each module runs alone as
``python -m analysis.bench.<module>``. Results are summarised in BENCHMARKS.md.
"""
