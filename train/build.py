"""The parts of a run built from its config: model, loaders, FLOPs reference.

Each function takes the typed config and what was already opened (the
dataset's statistics, the data root), so ``train.run.run`` reads as a list
of steps and ``train.export`` rebuilds a model the same way.
"""

from __future__ import annotations

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
        loader_config(
            cfg,
            data,
            cfg.data.train_split,
            cutoff,
            seed=cfg.seed,
            buffer_size=cfg.data.buffer_size,
            num_workers=cfg.data.num_workers,
            subset_threshold=subset["threshold"] if subset else None,
        ),
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
    training batch in file order (the same batch for every run on this data)."""
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
