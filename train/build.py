"""The parts of a run built from its config: model, loaders, FLOPs reference.

Each function takes the typed config and what was already opened (the
dataset's statistics, the data root), so ``train.run.run`` reads as a list
of steps and ``train.export`` rebuilds a model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.dataset import Dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.subsets import subset_threshold
from train import checkpoint
from train.config import ConfigError, TrainConfig
from train.dist import DistInfo
from train.models import AtomisticModel, build_model


def make_model(cfg: TrainConfig, stats: dict) -> AtomisticModel:
    """The configured model with the dataset's composition baseline and energy scale.

    Raises:
        ConfigError: an unknown family, size or knob (naming the closest valid one).
    """
    baseline = {int(z): e for z, e in stats.get("element_reference_energies_by_z", {}).items()}
    scale = stats.get("force_rms") or stats.get("residual_energy_per_atom_rms") or 1.0
    try:
        return build_model(
            cfg.model.family,
            cfg.model.size,
            cfg.model.forces,
            composition_baseline=baseline,
            energy_scale=scale,
            **dict(cfg.model.knobs),
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from None


def init_weights(model: AtomisticModel, source: str) -> None:
    """Starts ``model`` from another run's weights (``trainer.init_from``)."""
    weights = checkpoint.load_weights(source)
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ConfigError(
            f"trainer.init_from={source}: weights do not fit "
            f"this model (unexpected {result.unexpected_keys[:5]})"
        )


def loader_config(cfg: TrainConfig, data: Dataset, split: str, cutoff: float, **kw) -> LoaderConfig:
    """The loader settings every stream of a run shares, for one split."""
    return LoaderConfig(
        root=data,
        split=split,
        cutoff=cutoff,
        max_atoms=cfg.data.max_atoms,
        max_edges=cfg.data.max_edges,
        max_structures=cfg.data.max_structures,
        dtype="float64",
        verify_checksums=cfg.data.verify_checksums,
        **kw,
    )


def train_config(cfg: TrainConfig, data: Dataset, cutoff: float, **kw) -> LoaderConfig:
    """The shuffled training stream's settings over one dataset."""
    return loader_config(
        cfg,
        data,
        cfg.data.train_split,
        cutoff,
        seed=cfg.seed,
        buffer_size=cfg.data.buffer_size,
        num_workers=cfg.data.num_workers,
        **kw,
    )


def build_loaders(
    cfg: TrainConfig,
    data: Dataset,
    manifest: dict,
    subset: dict | None,
    cutoff: float,
    info: DistInfo,
) -> tuple[StreamingLoader, StreamingLoader | None]:
    """The shuffled training stream and the fixed validation stream (None without
    a non-empty validation split).

    Args:
        data: the dataset, opened once by the caller.
        manifest: the dataset's manifest.
        subset: the training subset (``subset_threshold``'s result) or None.
    """
    train = StreamingLoader(
        train_config(cfg, data, cutoff, subset_threshold=subset["threshold"] if subset else None),
        rank=info.rank,
        world_size=info.world_size,
    )
    val_info = manifest["splits"].get(cfg.data.val_split)
    if not val_info or val_info["num_structures"] == 0:
        return train, None
    val_subset = None
    if cfg.data.val_max_structures:
        fraction = min(1.0, cfg.data.val_max_structures / val_info["num_structures"])
        val_subset = subset_of(data, cfg.data.val_split, fraction, "structures")["threshold"]
    val = StreamingLoader(
        loader_config(
            cfg, data, cfg.data.val_split, cutoff, shuffle=False, subset_threshold=val_subset
        ),
        rank=info.rank,
        world_size=info.world_size,
    )
    return train, val


def subset_of(data: Dataset, split: str, fraction: float, unit: str) -> dict:
    """The nested subset holding ``fraction`` of ``split`` (data_pipelines.subsets)."""
    return subset_threshold(data, split, fraction, unit)


def reference_flops(
    model: AtomisticModel, cfg: TrainConfig, data: Dataset, cutoff: float, device, dtype
) -> dict[str, float]:
    """FLOPs per atom of forward and forward+backward, measured on the first
    training batch in file order (the same batch for every run on this data),
    once per configuration (train/flops_cache.py)."""
    from train.flops_cache import cached_flops, flops_key

    split = data.manifest.get("splits", {}).get(cfg.data.train_split) or {}
    if not split.get("num_structures"):
        raise ConfigError(
            f"the training split '{cfg.data.train_split}' of {cfg.data.root} has no "
            "structures: convert data into it, or choose another data.train_split"
        )
    where = {"split": cfg.data.train_split, "cutoff": float(cutoff),
             "max_atoms": cfg.data.max_atoms, "device": str(getattr(device, "type", device)),
             "dtype": str(dtype)}
    key = flops_key(model, data.manifest, where)
    return cached_flops(key, lambda: _measure_flops(model, cfg, data, cutoff, device, dtype))


def _measure_flops(model, cfg: TrainConfig, data: Dataset, cutoff: float, device, dtype):
    from train.trainer import to_device

    stream = StreamingLoader(
        LoaderConfig(
            root=data,
            split=cfg.data.train_split,
            cutoff=cutoff,
            max_atoms=cfg.data.max_atoms,
            shuffle=False,
        )
    )
    batch = next(iter(stream), None)
    if batch is None:
        raise ConfigError(
            f"the training split '{cfg.data.train_split}' of {cfg.data.root} has no "
            "structures: convert data into it, or choose another data.train_split"
        )
    return model.flops_per_atom(to_device(batch, device, dtype))


def default_augment(cfg: TrainConfig) -> bool:
    """Random rotations: on for pet (not equivariant), off for mace unless asked."""
    return cfg.trainer.augment if cfg.trainer.augment is not None else cfg.model.family == "pet"


def open_sources(cfg: TrainConfig) -> list[tuple[str, Dataset, float]]:
    """(name, dataset, weight) of every source of a mixture, levels of theory checked.

    Raises:
        ConfigError: sources of different levels of theory without
            ``data.mix_levels_of_theory=true``, or a source without training data.
    """
    from data_pipelines.dataset import open_dataset

    out = []
    for src in cfg.data.sources:
        data = open_dataset(str(src["root"]))
        try:
            data.require_nonempty(cfg.data.train_split)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        out.append((str(src.get("name") or src["root"]), data, float(src.get("weight", 1.0))))
    levels = {name: d.manifest.get("level_of_theory") for name, d, _ in out}
    if len(set(levels.values())) > 1 and not cfg.data.mix_levels_of_theory:
        listed = ", ".join(f"{n}: {lot!r}" for n, lot in levels.items())
        raise ConfigError(
            f"data.sources mix levels of theory ({listed}); energies of different levels "
            "cannot share one energy head. Set data.mix_levels_of_theory=true if they are "
            "compatible on purpose"
        )
    return out


def mixed_stats(sources: list[tuple[str, Dataset, float]]) -> dict:
    """Statistics for a model trained on a mixture: per element, the weighted mean
    of the sources' reference energies (over the sources holding it); scales as
    weighted means. Exact when the sources share a level of theory and their
    references agree; the per-source values are kept under ``sources``."""
    total = sum(w for _, _, w in sources) or 1.0
    refs: dict[str, list[tuple[float, float]]] = {}
    out: dict = {"sources": {}}
    for name, data, weight in sources:
        stats = data.stats
        out["sources"][name] = {
            k: stats.get(k) for k in ("element_reference_energies_by_z", "force_rms")
        }
        for z, e in stats.get("element_reference_energies_by_z", {}).items():
            refs.setdefault(str(z), []).append((weight, float(e)))
    out["element_reference_energies_by_z"] = {
        z: sum(w * e for w, e in pairs) / (sum(w for w, _ in pairs) or 1.0)
        for z, pairs in refs.items()
    }
    for key in ("force_rms", "residual_energy_per_atom_rms", "mean_num_neighbours"):
        values = [(w, d.stats.get(key)) for _, d, w in sources if d.stats.get(key)]
        if values:
            out[key] = sum(w * v for w, v in values) / (sum(w for w, _ in values) or total)
    out["elements"] = sorted({el for _, d, _ in sources for el in d.manifest["elements"]})
    return out


def build_mixture(
    cfg: TrainConfig, sources: list[tuple[str, Dataset, float]], cutoff: float, info: DistInfo
):
    """The training mixture and one validation stream per source that has a
    validation split (name -> loader)."""
    from data_pipelines.mixture import MixtureLoader, MixtureSource

    train = MixtureLoader(
        [
            MixtureSource(
                train_config(cfg, data, cutoff),
                weight,
                name=name,
            )
            for name, data, weight in sources
        ],
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.seed,
    )
    vals = {}
    for name, data, _ in sources:
        split = data.manifest["splits"].get(cfg.data.val_split)
        if split and split["num_structures"] > 0:
            vals[name] = StreamingLoader(
                loader_config(cfg, data, cfg.data.val_split, cutoff, shuffle=False),
                rank=info.rank,
                world_size=info.world_size,
            )
    return train, vals


@dataclass
class DataSetup:
    """The training data as the run sees it, opened once.

    Attributes:
        reference: the dataset whose first batch measures FLOPs (the first source).
        stats: statistics for the model (composition baseline, scales).
        elements: element symbols the model is checked against.
        num_structures, num_atoms: the training split (subset, or all sources).
        subset: the nested subset (``subset_threshold``'s result) or None.
        sources: (name, dataset, weight) of a mixture; empty for one root.
        block: the ``data`` block of summary.json.
    """

    reference: Dataset
    stats: dict
    elements: list[str]
    num_structures: int
    num_atoms: int
    subset: dict | None = None
    sources: list[tuple[str, Dataset, float]] = field(default_factory=list)
    block: dict = field(default_factory=dict)


def open_data(cfg: TrainConfig) -> DataSetup:
    """Opens the data root (or every source of a mixture) and checks it holds
    training data.

    Raises:
        ConfigError: an empty training split, or mixed levels of theory.
    """
    from data_pipelines.dataset import open_dataset

    if cfg.data.sources:
        sources = open_sources(cfg)
        splits = [d.manifest["splits"][cfg.data.train_split] for _, d, _ in sources]
        stats = mixed_stats(sources)
        total = sum(w for _, _, w in sources) or 1.0
        return DataSetup(
            reference=sources[0][1],
            stats=stats,
            elements=stats["elements"],
            num_structures=sum(s["num_structures"] for s in splits),
            num_atoms=sum(s["num_atoms"] for s in splits),
            sources=sources,
            block={
                "sources": [
                    {
                        "name": n,
                        "root": d.root,
                        "weight": w / total,
                        "level_of_theory": d.manifest.get("level_of_theory"),
                        "num_train_structures": s["num_structures"],
                    }
                    for (n, d, w), s in zip(sources, splits)
                ],
            },
        )
    data = open_dataset(cfg.data.root)
    try:
        data.require_nonempty(cfg.data.train_split)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    subset = None
    if cfg.data.fraction < 1.0:
        subset = subset_of(data, cfg.data.train_split, cfg.data.fraction, cfg.data.fraction_unit)
    split = subset or data.manifest["splits"][cfg.data.train_split]
    return DataSetup(
        reference=data,
        stats=data.stats,
        elements=list(data.manifest["elements"]),
        num_structures=split["num_structures"],
        num_atoms=split["num_atoms"],
        subset=subset,
        block={
            "root": cfg.data.root,
            "name": data.manifest.get("name"),
            "num_train_structures": split["num_structures"],
            "num_train_atoms": split["num_atoms"],
            "data_fraction": cfg.data.fraction,
            "fraction_unit": cfg.data.fraction_unit,
        },
    )


def loaders(cfg: TrainConfig, setup: DataSetup, cutoff: float, info: DistInfo):
    """(train stream, validation stream or None, validation streams per source)."""
    if setup.sources:
        train, vals = build_mixture(cfg, setup.sources, cutoff, info)
        return train, None, vals
    train, val = build_loaders(
        cfg, setup.reference, setup.reference.manifest, setup.subset, cutoff, info
    )
    return train, val, {}
