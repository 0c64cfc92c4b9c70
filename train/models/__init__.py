"""Model registry: one family name -> one class, sizes as data (presets.py).

Example:
    >>> model = build_model("pet", size="xs", forces="both", composition_baseline={29: -3.7})
    >>> out = model(batch)  # energy (S,), forces (N, 3), stress (S, 3, 3), direct_*
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import torch

from train.models.base import (
    DIRECT_FORCES,
    DIRECT_STRESS,
    FORCES_MODES,
    AtomisticModel,
    ForcesMode,
)
from train.models.count_cache import cached_count, count_key
from train.models.pet import PET, PETConfig
from train.models.presets import PRESETS, PUBLISHED_PET_PARAMETERS


def _mace():
    """train.models.mace, imported on first use (mace-torch takes seconds to load)."""
    from train.models import mace

    return mace


class _Registry(Mapping):
    """Family name -> model class. mace-torch (and e3nn) take several seconds to
    import, so the mace entry is imported on first use, not with this package."""

    _loaders = {
        "pet": lambda: PET,
        "mace": lambda: _mace().MACEModel,
    }

    def __getitem__(self, name: str) -> type[AtomisticModel]:
        return self._loaders[name]()

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


MODELS: Mapping[str, type[AtomisticModel]] = _Registry()


def __getattr__(name: str):
    if name == "MACEConfig":
        return _mace().MACEConfig
    raise AttributeError(name)


__all__ = [
    "DIRECT_FORCES",
    "DIRECT_STRESS",
    "FORCES_MODES",
    "MODELS",
    "PRESETS",
    "PUBLISHED_PET_PARAMETERS",
    "AtomisticModel",
    "MACEConfig",
    "PETConfig",
    "build_model",
    "count_parameters",
    "list_sizes",
    "model_config",
]


# Names other codes give our knobs (metatrain's PET calls the edge width d_pet).
KNOB_ALIASES = {"d_pet": "d_edge"}


def _closest(name: str, options: list[str]) -> str:
    if KNOB_ALIASES.get(name) in options:
        return f" (did you mean '{KNOB_ALIASES[name]}'?)"
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def model_config(family: str, size: str = "tiny", **overrides: Any) -> Any:
    """The config dataclass of a family at a preset size, with knobs overridden.

    Args:
        family: a key of MODELS.
        size: a preset name of that family.
        **overrides: config fields to replace (None values are ignored).

    Raises:
        KeyError: unknown family, size or knob (the message suggests the closest).
    """
    if family not in MODELS:
        raise KeyError(f"unknown model family '{family}'{_closest(family, list(MODELS))}")
    presets = PRESETS[family]
    if size not in presets:
        raise KeyError(
            f"unknown size '{size}' for {family}{_closest(size, list(presets))}; "
            f"sizes: {', '.join(presets)}"
        )
    config_cls = MODELS[family].Config
    fields = [f.name for f in dataclasses.fields(config_cls)]
    for key in overrides:
        if key not in fields:
            raise KeyError(
                f"unknown {family} knob 'model.knobs.{key}'{_closest(key, fields)}; "
                f"knobs: {', '.join(fields)}"
            )
    values = {**presets[size], **{k: v for k, v in overrides.items() if v is not None}}
    return config_cls(**values)


def build_model(
    family: str,
    size: str = "tiny",
    forces: ForcesMode = "conservative",
    composition_baseline: dict[int, float] | torch.Tensor | list | None = None,
    energy_scale: float | None = None,
    cutoff: float | None = None,
    **overrides: Any,
) -> AtomisticModel:
    """Builds a model with random weights.

    Args:
        family: "pet" or "mace".
        size: preset name (`tiny`, `xxs`, `xs`, `s`, `m`, `l`, `xl`).
        forces: "direct", "conservative" or "both" (mace: conservative only).
        composition_baseline: per-element reference energies, eV per atom
            ({Z: eV} or a sequence indexed by Z), usually from dataset statistics.
        energy_scale: scale of the learned energy, eV (e.g. per-atom energy std).
        cutoff: neighbour-list radius override, Angstrom.
        **overrides: any other config knob of the family (see PETConfig, MACEConfig).

    Returns:
        The model, in float32 on the CPU (use `.to(device, dtype)`).
    """
    config = model_config(family, size, cutoff=cutoff, **overrides)
    model = MODELS[family](config, forces=forces)
    if composition_baseline is not None:
        model.set_composition_baseline(composition_baseline)
    if energy_scale is not None:
        model.set_energy_scale(energy_scale)
    return model


def count_parameters(family: str, size: str, **overrides: Any) -> int:
    """Exact parameter count of a preset without allocating its weights.

    Counts are cached on disk (train.models.count_cache, keyed by the
    configuration, the model code and library versions): a hit imports no
    model library and builds nothing. A miss checks the knobs like
    `model_config` (KeyError naming the closest) and counts.
    """
    if family in PRESETS and size in PRESETS[family]:
        key = count_key(family, PRESETS[family][size], overrides)
        return cached_count(key, lambda: _count_parameters(family, size, **overrides))
    return _count_parameters(family, size, **overrides)  # raises the helpful KeyError


def _count_parameters(family: str, size: str, **overrides: Any) -> int:
    config = model_config(family, size, **overrides)
    if family == "mace":
        from train.models.mace import count_mace_parameters

        return count_mace_parameters(config)
    with torch.device("meta"):
        return MODELS[family](config).num_parameters()


def list_sizes() -> list[tuple[str, str, int]]:
    """(family, size, num_parameters) for every preset of every family (cached counts)."""
    return [
        (family, size, count_parameters(family, size))
        for family in MODELS
        for size in PRESETS[family]
    ]
