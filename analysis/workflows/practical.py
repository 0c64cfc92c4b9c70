"""The practical tests of one trained model, for each way of running it.

    python -m analysis practical --model MODEL --test-data SHARD_DIR --out DIR
        [--variants direct direct-rot3 conservative conservative-rot3] [--quick]

A *variant* is a force mode plus optional rotational averaging:
``direct``, ``conservative``, ``direct-rotL``, ``conservative-rotL`` (L = l_max of
the grid; ``-rotLi`` adds inversion). For each variant, with EMT as the reference:

- ``labels``: energy, force and stress errors on the first ``--num-test``
  structures of the test split (the labels are EMT's);
- ``relax``: free relaxation (positions and cell, FIRE) of fcc, L1_2, strained,
  bcc, hcp and rock-salt cells; RMSD and energy against EMT's own relaxation,
  and whether the space group survived;
- ``relax-fixsym``: the same with ASE's FixSymmetry, which must keep every group;
- ``phonons``: fcc Cu, Al, Ni and Au and L1_2 Cu3Au, 2x2x2 supercells; frequency
  errors against EMT, imaginary modes, acoustic-sum-rule violation before
  symmetrisation;
- ``symmetry``: rotational error (random rotations, and the grid spread of the
  uncorrected model), lambda and NVE drift on test structures;

plus one ``speed`` run over every configuration. Writes each workflow's own
files under ``DIR/<variant>/<workflow>/``, ``DIR/results.json`` (every metric
by variant) and ``DIR/table.md`` (the summary table). Finished parts are kept:
running the command again only does what is missing.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from analysis.workflows import phonons, relax, speed, symmetry
from analysis.workflows.foreign import model_kind
from analysis.workflows.model import ModelOptions
from analysis.workflows.settings import setting
from analysis.workflows.structures import Structures, as_structures, load_structures
from data_pipelines.atomic import write_json

VARIANT = re.compile(r"^(direct|conservative)(?:-rot(\d+)(i?))?$")
RELAX_SETS = ("builtin:metals", "builtin:prototypes")
QUICK_RELAX = ("builtin:cu-fcc", "builtin:cu-hcp")
PHONON_NAMES = ("cu-fcc", "al-fcc", "ni-fcc", "au-fcc", "cu3au-l12")


@dataclass(frozen=True)
class PracticalSettings:
    """Which variants and how much of each test; each field's help is its metadata
    (``python -m analysis practical --help`` lists them)."""

    test_data: str = setting(help="shard directory with a test split (labels are EMT's)")
    variants: tuple[str, ...] = setting(
        ("direct", "direct-rot3", "conservative", "conservative-rot3"),
        "force mode with an optional -rotL[i]: direct, conservative-rot3, direct-rot2i",
    )
    num_test: int = setting(200, "test structures for the label errors")
    speed_atoms: int = setting(256, "atoms of the fcc cell the variants are timed on")
    quick: bool = setting(False, "fewer structures and steps (tests)")

    def __post_init__(self) -> None:
        for variant in self.variants:
            parse_variant(variant, "")


def parse_variant(spec: str, model: str) -> ModelOptions:
    """``direct-rot3`` -> ModelOptions(forces='direct', rotational_average=3)."""
    match = VARIANT.match(spec)
    if match is None:
        raise ValueError(
            f"variant {spec!r}: expected direct|conservative with an optional -rotL "
            "(e.g. direct-rot3, conservative-rot2i)"
        )
    forces, l_max, inversion = match.groups()
    return ModelOptions(
        spec=model,
        forces=forces,  # type: ignore[arg-type]
        rotational_average=int(l_max) if l_max else None,
        inversion=bool(inversion),
    )


def load_test_structures(root: str, count: int) -> list[tuple[str, object]]:
    """The first ``count`` labelled structures of the test split as ASE atoms."""
    from data_pipelines.dataset import iter_split
    from data_pipelines.inspect import to_atoms

    out = []
    for s in iter_split(root, "test"):
        out.append((re.sub(r"[^A-Za-z0-9._-]+", "_", s.source_id), to_atoms(s)))
        if len(out) == count:
            break
    if not out:
        raise ValueError(f"{root}: the test split holds no structures")
    return out


def label_errors(options: ModelOptions, structures: list) -> dict[str, float]:
    """Energy (per atom), force and stress MAE against the structures' labels."""
    calc = options.build()
    e_err, f_err, s_err = [], [], []
    for _, labelled in structures:
        ref = labelled.calc.results
        atoms = labelled.copy()
        atoms.calc = calc
        e_err.append(abs(atoms.get_potential_energy() - ref["energy"]) / len(atoms))
        f_err.append(np.abs(atoms.get_forces() - ref["forces"]).ravel())
        if "stress" in ref and atoms.pbc.all():
            stress = np.asarray(ref["stress"])
            if stress.shape == (3, 3):
                stress = full_3x3_to_voigt_6_stress(stress)
            s_err.append(np.abs(atoms.get_stress() - stress))
    return {
        "labels/num_structures": len(structures),
        "labels/energy_mae_per_atom": float(np.mean(e_err)),
        "labels/force_mae": float(np.concatenate(f_err).mean()),
        "labels/stress_mae": float(np.concatenate(s_err).mean()) if s_err else math.nan,
    }


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    metrics = compute()
    write_json(path, metrics)
    return json.loads(path.read_text())


def check_elements(spec: str, quick: bool = False) -> None:
    """Stops before any work when the model lacks an element of the built-in
    structures the tests relax and take phonons of (EMT's metals).

    Raises:
        ValueError: naming the elements missing and what to run instead.
    """
    from ase.data import chemical_symbols

    from analysis.workflows.model import get_calculator, supported_symbols

    known = supported_symbols(get_calculator(spec))
    if known is None:
        return
    specs = [*(QUICK_RELAX if quick else RELAX_SETS), *(f"builtin:{n}" for n in PHONON_NAMES)]
    needed = {el for s in specs for _, atoms in load_structures(s)
              for el in atoms.get_chemical_symbols()}
    missing = sorted(needed - known, key=chemical_symbols.index)
    if missing:
        raise ValueError(
            f"model {spec!r} knows {', '.join(sorted(known))}, but the practical tests relax "
            f"and take phonons of EMT metals and need {', '.join(missing)} too: train on EMT "
            "data (python -m data_pipelines.generate --calculator emt), or run relax, phonons "
            "or symmetry with --structures of the model's own elements"
        )


def evaluate_variant(
    name: str,
    options: ModelOptions,
    out: Path,
    tests: list,
    quick: bool = False,
) -> dict[str, float]:
    """Every workflow for one variant; returns the merged flat metrics."""
    target = out / name
    metrics: dict[str, float] = {}
    t0 = time.time()
    metrics.update(
        _cached(target / "labels" / "metrics.json", lambda: label_errors(options, tests))
    )
    relax_sets = QUICK_RELAX if quick else RELAX_SETS
    relax_structures = [p for spec in relax_sets for p in load_structures(spec)]
    settings = relax.RelaxSettings(fmax=0.01, max_steps=30 if quick else 300, reference_model="emt")
    for part, fix in (("relax", False), ("relax-fixsym", True)):
        part_metrics = _cached(
            target / part / "metrics.json",
            lambda fix=fix, part=part: relax.run(
                options,
                relax_structures,
                replace(settings, fix_symmetry=fix),
                out=target / part,
            )["metrics"],
        )
        metrics.update({k.replace("relax/", f"{part}/"): v for k, v in part_metrics.items()})
    names = PHONON_NAMES[:1] if quick else PHONON_NAMES
    phonon_structures = [p for n in names for p in load_structures(f"builtin:{n}")]
    metrics.update(
        _cached(
            target / "phonons" / "metrics.json",
            lambda: phonons.run(
                options,
                phonon_structures,
                phonons.PhononSettings(relax_fmax=1e-3, mesh=(8, 8, 8), reference_model="emt"),
                out=target / "phonons",
            )["metrics"],
        )
    )
    sym_settings = symmetry.SymmetrySettings(
        num_rotations=2 if quick else 8,
        grid_l_max=1 if quick else 3,
        jacobian_atoms=2 if quick else 8,
        min_atoms=8 if quick else 32,
        md_steps=10 if quick else 100,
    )
    metrics.update(
        _cached(
            target / "symmetry" / "metrics.json",
            lambda: symmetry.run(
                options, tests[: 1 if quick else 4], sym_settings, out=target / "symmetry"
            )["metrics"],
        )
    )
    print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    return metrics


COLUMNS = (
    ("force MAE (meV/A)", "labels/force_mae", 1e3, ".1f"),
    ("energy MAE (meV/atom)", "labels/energy_mae_per_atom", 1e3, ".1f"),
    ("relax RMSD vs EMT (A)", "relax/rmsd_mean", 1.0, ".1e"),
    ("relax volume err (%)", "relax/volume_error_mean_abs", 1e2, ".2f"),
    ("relax energy err (meV/atom)", "relax/energy_mae_per_atom", 1e3, ".2f"),
    ("space group kept, free", "relax/spacegroup_kept_fraction", None, ""),
    ("space group kept, FixSymmetry", "relax-fixsym/spacegroup_kept_fraction", None, ""),
    ("phonon MAE (THz)", "phonon/freq_mae_THz", 1.0, ".3f"),
    ("imaginary modes", "phonon/num_imaginary", 1.0, ".0f"),
    ("ASR violation (eV/A^2)", "phonon/asr_violation", 1.0, ".2e"),
    ("rot. error forces (meV/A)", "symmetry/rot_error_forces", 1e3, ".3f"),
    ("lambda", "symmetry/lambda", 1.0, ".2e"),
    ("NVE drift (meV/atom/ps)", "symmetry/nve_drift_meV_per_atom_per_ps", 1.0, ".2f"),
    ("us/atom", "speed/us_per_atom", 1.0, ".0f"),
)


def _cell(metrics: dict, key: str, scale: float | None, fmt: str, num: int) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if scale is None:  # a fraction of structures: show the count
        # space groups kept: out of the starts above P1 (relax counts P1 starts apart)
        num -= int(metrics.get(f"{key.split('/')[0]}/num_p1_starts", 0) or 0)
        return f"{round(value * num)}/{num}"
    return format(value * scale, fmt)


def table(results: dict[str, dict]) -> str:
    """Markdown table: one row per variant."""
    head = "| variant | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    lines = [head, rule]
    for name, m in results.items():
        num = int(m.get("relax/num_structures", 0))
        cells = [_cell(m, key, scale, fmt, num) for _, key, scale, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def speed_for_variants(model: str, variants: dict[str, ModelOptions], size: int, out: Path):
    """The speed workflow over the variants at one size (kept in ``out/speed``)."""
    path = out / "speed" / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    settings = speed.SpeedSettings(sizes=(size,), rot_l_max=())
    return speed.run(ModelOptions(spec=model), None, settings, out / "speed", configs=variants)[
        "metrics"
    ]


def run(
    model: ModelOptions,
    structures: Structures | None,
    settings: PracticalSettings,
    out: Path,
) -> dict:
    """Every practical test of ``model`` for each variant, and the summary table.

    Args:
        model: the model: our exported file, a metatomic or mace-torch file, or
            ``module:factory`` (only its spec is used; the variants choose force
            mode and averaging; a model with gradient forces only takes the
            ``conservative`` variants).
        structures: labelled test structures, or None for the first
            ``settings.num_test`` of the test split of ``settings.test_data``.
        settings: variants and test sizes.
        out: directory for every part, DIR/results.json and DIR/table.md.

    Returns:
        ``{"model", "variants": {variant: metrics}, "rotational_error_drop"}``.

    Raises:
        FileNotFoundError: the model file is missing.
    """
    model_kind(model.spec)  # FileNotFoundError for a missing model file
    out = Path(out)
    variants = {v: parse_variant(v, model.spec) for v in settings.variants}
    check_elements(model.spec, settings.quick)
    tests = (
        load_test_structures(settings.test_data, settings.num_test)
        if structures is None
        else as_structures(structures)
    )
    out.mkdir(parents=True, exist_ok=True)
    results = {
        name: evaluate_variant(name, options, out, tests, settings.quick)
        for name, options in variants.items()
    }
    timed = speed_for_variants(model.spec, variants, settings.speed_atoms, out)
    for name in results:
        for key in ("us_per_atom", "peak_memory_mb", "num_rotations", "cost_vs_plain_per_rotation"):
            found = timed.get(f"speed/{name}/n{settings.speed_atoms}/{key}")
            if found is not None:
                results[name][f"speed/{key}"] = found
    drops = {}
    for name, options in variants.items():
        plain = options.forces
        if options.rotational_average is not None and plain in results:
            before = results[plain]["symmetry/rot_error_forces"]
            after = results[name]["symmetry/rot_error_forces"]
            drops[name] = before / after if after > 0 else math.inf
    result = {"model": model.spec, "variants": results, "rotational_error_drop": drops}
    write_json(out / "results.json", result)
    text = table(results)
    if drops:
        text += (
            "\nRotational error (forces) of the averaged model, relative drop: "
            + ", ".join(f"{k} {v:.0f}x" for k, v in drops.items())
            + "\n"
        )
    (out / "table.md").write_text(text)
    return result


def summary(model: ModelOptions, settings: PracticalSettings, result: dict, out: Path) -> str:
    """The command's output: the summary table and where it is."""
    return (Path(out) / "table.md").read_text() + f"\n-> {Path(out) / 'table.md'}"
