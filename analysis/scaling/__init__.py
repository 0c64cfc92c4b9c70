"""Scaling-law analysis of a study's runs.

Modules, each importing only from those above it in this list:

- ``laws``: the power laws (in N, D, both, or compute C), their log-space model,
  the fitted result;
- ``types``: runs, fit settings, fitted entries and the whole analysis;
- ``table``, ``load``: CSV tables, study directories and W&B projects -> runs;
- ``points``: which runs are points of a law (non-embedding N, WSD-ladder
  mains, the lower envelope of a tuned study);
- ``quality``, ``fits``, ``diagnostics``: one law's fit with a multi-start
  bootstrap, its verdict, leave-one-out;
- ``frontier``: compute envelopes, compute-optimal allocation and family
  comparisons;
- ``analyse``: every law for every family and metric of a study;
- ``fitsjson``, ``sentences``, ``markdown``, ``plots``, ``report``: fits.json,
  the report's words and layout, figures, writing it all (and W&B);
- ``command``: ``python -m analysis scaling``.
"""
