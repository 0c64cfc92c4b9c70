"""Evaluation workflows of a trained model (or EMT): relax, phonons, symmetry, speed, practical.

Each workflow module has a settings dataclass and
``run(model, structures, settings, out) -> result``; ``registry`` lists them,
``command`` makes their command line (``python -m analysis relax ...``) from
the settings. Below them: ``settings`` (typed settings -> flags and checks),
``model`` (ModelOptions, get_calculator), ``structures`` (files and built-in
sets), ``results`` (results.json + metrics.json), ``memory`` (peak memory).
"""
