"""The parts of a run built from its config: model, loaders, FLOPs reference.

Each function takes the typed config and what was already opened (the
dataset's statistics, the data root), so ``train.run.run`` reads as a list
of steps and ``train.export`` rebuilds a model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from data_pipelines.batching import HeadLabelled
from data_pipelines.dataset import Dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.subsets import subset_threshold
from train import checkpoint
from train.config import ConfigError, TrainConfig
from train.dist import DistInfo
from train.models import AtomisticModel, build_model
from train.sources import (
    build_mixture,
    head_of,
    loader_config,
    mixed_stats,
    model_heads,
    open_sources,
    source_heads,
    train_config,
)


def _by_z(refs: dict) -> dict[int, float]:
    return {int(z): float(e) for z, e in (refs or {}).items()}


def make_model(cfg: TrainConfig, stats: dict) -> AtomisticModel:
    """The configured model with the dataset's composition baseline and energy scale
    (with heads: each head's baseline from its own sources,
    ``stats["element_reference_energies_by_head"]``).

    Raises:
        ConfigError: an unknown family, size or knob (naming the closest valid one).
    """
    baseline = _by_z(stats.get("element_reference_energies_by_z"))
    scale = stats.get("force_rms") or stats.get("residual_energy_per_atom_rms") or 1.0
    try:
        model = build_model(
            cfg.model.family,
            cfg.model.size,
            cfg.model.forces,
            composition_baseline=baseline,
            energy_scale=scale,
            **dict(cfg.model.knobs),
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from None
    by_head = stats.get("element_reference_energies_by_head")
    if model.head_names and by_head is not None:  # a head without data keeps zeros
        for head in model.head_names:
            model.set_composition_baseline(_by_z(by_head.get(head)), head=head)
    model.data_statistics = stats  # what init_weights compares a parent's baselines with
    return model


STATISTICS = ("composition_baseline", "energy_scale")  # buffers a fine-tune keeps


def init_weights(model: AtomisticModel, source: str, stats: dict | None = None) -> dict:
    """Starts ``model`` from another run's weights (``trainer.init_from``),
    composition baselines and energy scale included.

    The parent's statistics are kept, never replaced by this run's data's: a
    fine-tune starts at the parent's error, not at a jump (fairchem #1486).
    Only an element the parent has no reference for (baseline exactly 0) takes
    this data's reference.

    Args:
        stats: this run's data statistics (for the elements the parent lacks,
            and for the report of how far the two baselines differ); default:
            the ones ``make_model`` built the model with.

    Returns:
        What was kept: ``{"from", "filled_elements", "max_baseline_difference_eV",
        "heads", "energy_scale"}`` (model.pt and its card record it).

    Raises:
        ConfigError: weights that do not fit (another family, size or set of heads).
    """
    weights = checkpoint.load_weights(source)
    own = model.state_dict()
    misfit = [
        f"{k} {tuple(v.shape)} there, {tuple(own[k].shape)} here"
        for k, v in weights.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if misfit:
        heads = ", ".join(model.head_names) or "one head"
        raise ConfigError(
            f"trainer.init_from={source}: weights do not fit this model ({'; '.join(misfit[:3])})"
            f"; this model: {model.family} with heads {heads}. Fine-tune with the "
            "parent's model, size and model.knobs.heads"
        )
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ConfigError(
            f"trainer.init_from={source}: weights do not fit "
            f"this model (unexpected {result.unexpected_keys[:5]})"
        )
    lacking = [k for k in STATISTICS if k not in weights]
    if lacking:
        print(f"note: trainer.init_from={source} holds no {', '.join(lacking)}: this data's "
              "statistics are used instead", flush=True)
    return _keep_parent_statistics(model, source, stats or getattr(model, "data_statistics", {}))


def _keep_parent_statistics(model: AtomisticModel, source: str, stats: dict) -> dict:
    """Fills the elements the parent has no reference for; measures how far its
    baselines are from this data's."""
    heads = model.head_names or (None,)
    by_head = stats.get("element_reference_energies_by_head") or {}
    filled, worst = [], 0.0
    with torch.no_grad():
        for k, head in enumerate(heads):
            # a head this data does not train has no references here: nothing to fill
            refs = _by_z(by_head.get(head) if model.head_names and by_head
                         else stats.get("element_reference_energies_by_z"))
            row = model.composition_baseline[k] if model.head_names else model.composition_baseline
            for z, e in refs.items():
                if float(row[z]) == 0.0 and e != 0.0:
                    row[z] = e
                    filled.append(f"{head}:{z}" if head else str(z))
                else:
                    worst = max(worst, abs(float(row[z]) - e))
    record = {
        "from": str(source),
        "heads": list(model.head_names),
        "filled_elements": filled,
        "max_baseline_difference_eV": worst,
        "energy_scale": float(model.energy_scale),
    }
    print(
        f"fine-tune from {source}: its composition baseline and energy scale are kept "
        f"(up to {worst:.4g} eV/atom from this data's references"
        + (f"; elements it lacked, from this data: {', '.join(filled)}" if filled else "")
        + ")",
        flush=True,
    )
    model.statistics_origin = record  # train.export puts it on the model card
    return record


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


# Atoms in the FLOPs reference batch at most: the count per atom depends on the
# atoms' neighbour counts, not on how many share a batch, while torch's FLOP
# counter costs about three forward-backward passes of the batch it counts.
FLOPS_REFERENCE_ATOMS = 64


def reference_flops(
    model: AtomisticModel, cfg: TrainConfig, data: Dataset, cutoff: float, device, dtype
) -> dict[str, float]:
    """FLOPs per atom of forward and forward+backward, measured on the first
    training batch in file order (the same batch for every run on this data;
    at most FLOPS_REFERENCE_ATOMS atoms, one structure at least), once per
    configuration (train/flops_cache.py)."""
    from train.flops_cache import cached_flops, flops_key

    split = data.manifest.get("splits", {}).get(cfg.data.train_split) or {}
    if not split.get("num_structures"):
        raise ConfigError(
            f"the training split '{cfg.data.train_split}' of {cfg.data.root} has no "
            "structures: convert data into it, or choose another data.train_split"
        )
    where = {"split": cfg.data.train_split, "cutoff": float(cutoff),
             "max_atoms": min(cfg.data.max_atoms, FLOPS_REFERENCE_ATOMS),
             "device": str(getattr(device, "type", device)), "dtype": str(dtype)}
    key = flops_key(model, data.manifest, where)
    return cached_flops(key, lambda: _measure_flops(model, cfg, data, cutoff, device, dtype))


def _measure_flops(model, cfg: TrainConfig, data: Dataset, cutoff: float, device, dtype):
    from train.trainer import to_device

    stream = StreamingLoader(
        LoaderConfig(
            root=data,
            split=cfg.data.train_split,
            cutoff=cutoff,
            max_atoms=min(cfg.data.max_atoms, FLOPS_REFERENCE_ATOMS),
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
        heads: the head index of each source (of the root: one entry).
    """

    reference: Dataset
    stats: dict
    elements: list[str]
    num_structures: int
    num_atoms: int
    subset: dict | None = None
    sources: list[tuple[str, Dataset, float]] = field(default_factory=list)
    block: dict = field(default_factory=dict)
    heads: list[int] = field(default_factory=list)


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
        heads = source_heads(cfg, sources)
        stats = mixed_stats(sources, heads, model_heads(cfg))
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
                        **({"head": model_heads(cfg)[h]} if model_heads(cfg) else {}),
                    }
                    for (n, d, w), s, h in zip(sources, splits, heads)
                ],
            },
            heads=heads,
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
    stats = data.stats
    head = head_of(cfg, cfg.data.root, data.manifest.get("level_of_theory"), None)
    if model_heads(cfg):  # one root trains one head: the others keep zero references
        refs = stats.get("element_reference_energies_by_z", {})
        stats = {**stats, "heads": list(model_heads(cfg)),
                 "element_reference_energies_by_head": {model_heads(cfg)[head]: refs}}
    return DataSetup(
        reference=data,
        stats=stats,
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
            **({"head": model_heads(cfg)[head]} if model_heads(cfg) else {}),
        },
        heads=[head],
    )


def loaders(cfg: TrainConfig, setup: DataSetup, cutoff: float, info: DistInfo):
    """(train stream, validation stream or None, validation streams per source)."""
    if setup.sources:
        train, vals = build_mixture(cfg, setup.sources, cutoff, info)
        return train, None, vals
    train, val = build_loaders(
        cfg, setup.reference, setup.reference.manifest, setup.subset, cutoff, info
    )
    if model_heads(cfg):  # every batch names its head (the root's)
        head = setup.heads[0] if setup.heads else 0
        train = HeadLabelled(train, head)
        val = HeadLabelled(val, head) if val is not None else None
    return train, val, {}
