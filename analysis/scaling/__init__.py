"""Scaling-law analysis of a study's runs.

Modules, each importing only from those above it in this list:

- ``laws``: the power laws, their log-space model, the fitted result;
- ``types``: runs, fit settings, fitted entries and the whole analysis;
- ``load``: study directories, CSV tables and W&B projects -> runs;
- ``quality``, ``fits``, ``diagnostics``: one law's fit, its verdict, leave-one-out;
- ``frontier``: compute-optimal frontier and family comparisons;
- ``analyse``: every law for every family and metric of a study;
- ``plots``, ``report``: figures, fits.json, report.md, W&B;
- ``command``: ``python -m analysis scaling``.
"""
