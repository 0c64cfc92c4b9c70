"""A run's data sources: the loader settings every stream shares, the heads
of a mixture's levels of theory, the sources opened and checked, their
statistics pooled per head, and the mixture's training and validation streams
(``train.build`` uses these)."""

from __future__ import annotations

from data_pipelines.batching import HeadLabelled
from data_pipelines.dataset import Dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from train.config import ConfigError, TrainConfig
from train.dist import DistInfo


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


def model_heads(cfg: TrainConfig) -> tuple[str, ...]:
    """The heads the config asks for (``model.knobs.heads``; empty: one head)."""
    heads = dict(cfg.model.knobs).get("heads") or ()
    return (heads,) if isinstance(heads, str) else tuple(str(h) for h in heads)


def head_of(cfg: TrainConfig, name: str, level: str | None, explicit: str | None) -> int:
    """The head index of a source: its ``head:`` entry, else its level of theory.

    Raises:
        ConfigError: a head that is not one of ``model.knobs.heads``.
    """
    heads = model_heads(cfg)
    if not heads:
        if explicit is not None:
            raise ConfigError(
                f"data source {name} names head {explicit!r}, but the model has one head: "
                f"set model.knobs.heads=[...] to train a head per level of theory"
            )
        return 0
    label = explicit if explicit is not None else level
    if label not in heads:
        how = (f"its 'head: {explicit}'" if explicit is not None
               else f"its level of theory {level!r}")
        raise ConfigError(
            f"data source {name}: {how} is not one of model.knobs.heads "
            f"({', '.join(heads)}); name its head with head: NAME in its data.sources entry"
        )
    return heads.index(label)


def open_sources(cfg: TrainConfig) -> list[tuple[str, Dataset, float]]:
    """(name, dataset, weight) of every source of a mixture, levels of theory checked.

    Sources of different levels of theory need a head each (``model.knobs.heads``,
    a source goes to the head named by its ``head:`` entry or its level of
    theory), or ``data.mix_levels_of_theory=true`` (one head, on purpose).

    Raises:
        ConfigError: mixed levels of theory without heads or the flag, a source
            whose head is not a model head, or a source without training data.
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
    source_heads(cfg, out)  # every source has a head of the model
    # with heads, a source's head comes from its level or is named on purpose
    if not model_heads(cfg) and len(set(levels.values())) > 1 and not cfg.data.mix_levels_of_theory:
        listed = ", ".join(f"{n}: {lot!r}" for n, lot in levels.items())
        raise ConfigError(
            f"data.sources mix levels of theory ({listed}); energies of different levels "
            "cannot share one energy head. Give the model a head per level of theory "
            "(model.knobs.heads=[...], each source goes to the head named by its level of "
            "theory or by head: NAME in its entry), or set data.mix_levels_of_theory=true if "
            "they are compatible on purpose"
        )
    return out


def source_heads(cfg: TrainConfig, sources: list[tuple[str, Dataset, float]]) -> list[int]:
    """The head index of each source (all 0 for a model with one head)."""
    entries = {str(src.get("name") or src["root"]): src for src in cfg.data.sources}
    return [
        head_of(cfg, name, data.manifest.get("level_of_theory"),
                None if entries.get(name, {}).get("head") is None
                else str(entries[name]["head"]))
        for name, data, _ in sources
    ]


def mixed_stats(sources: list[tuple[str, Dataset, float]], heads: list[int] | None = None,
                head_names: tuple[str, ...] = ()) -> dict:
    """Statistics for a model trained on a mixture: per element, the weighted mean
    of the sources' reference energies (over the sources holding it); scales as
    weighted means. Exact when the sources share a level of theory and their
    references agree; the per-source values are kept under ``sources``.

    With heads (``heads``: each source's head index, ``head_names``), each head's
    references are the weighted mean over its own sources only
    (``element_reference_energies_by_head``); ``element_reference_energies_by_z``
    is then the first head's."""
    total = sum(w for _, _, w in sources) or 1.0
    heads = heads or [0] * len(sources)
    refs: dict[int, dict[str, list[tuple[float, float]]]] = {}
    out: dict = {"sources": {}}
    for (name, data, weight), head in zip(sources, heads):
        stats = data.stats
        out["sources"][name] = {
            k: stats.get(k) for k in ("element_reference_energies_by_z", "force_rms")
        }
        out["sources"][name]["level_of_theory"] = data.manifest.get("level_of_theory")
        if head_names:
            out["sources"][name]["head"] = head_names[head]
        for z, e in stats.get("element_reference_energies_by_z", {}).items():
            refs.setdefault(head, {}).setdefault(str(z), []).append((weight, float(e)))
    by_head = {
        head: {
            z: sum(w * e for w, e in pairs) / (sum(w for w, _ in pairs) or 1.0)
            for z, pairs in per_z.items()
        }
        for head, per_z in refs.items()
    }
    out["element_reference_energies_by_z"] = by_head.get(0, {})
    if head_names:
        out["heads"] = list(head_names)
        out["element_reference_energies_by_head"] = {
            head_names[h]: by_head.get(h, {}) for h in range(len(head_names))
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

    heads = source_heads(cfg, sources)
    train = MixtureLoader(
        [
            MixtureSource(
                train_config(cfg, data, cutoff),
                weight,
                name=name,
                head=head,
            )
            for (name, data, weight), head in zip(sources, heads)
        ],
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.seed,
    )
    vals = {}
    for (name, data, _), head in zip(sources, heads):
        split = data.manifest["splits"].get(cfg.data.val_split)
        if split and split["num_structures"] > 0:
            vals[name] = HeadLabelled(
                StreamingLoader(
                    loader_config(cfg, data, cfg.data.val_split, cutoff, shuffle=False),
                    rank=info.rank,
                    world_size=info.world_size,
                ),
                head,
            )
    return train, vals
