"""The evaluation workflows by name, with what each takes.

Every workflow is a settings dataclass and ``run(model, structures, settings,
out) -> result`` (see :mod:`analysis.workflows.results`); this table is what
the command line (:mod:`analysis.workflows.command`) and a study's evaluation
stages (``slurm/stages.py``) build on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from analysis.workflows import elastic, phonons, practical, relax, speed, symmetry
from analysis.workflows.model import CORRECTIONS, ModelOptions
from analysis.workflows.settings import check_keys, from_mapping, names


@dataclass(frozen=True)
class Workflow:
    """One workflow and what it takes.

    Attributes:
        name: the sub-command, ``python -m analysis <name>``.
        settings: the settings dataclass; its fields are the flags.
        run: ``run(model, structures, settings, out) -> result``.
        summary: ``summary(model, settings, result, out) -> str``, what the
            command prints.
        doc: the module docstring, the command's ``--help``.
        model_fields: the :class:`ModelOptions` fields it takes besides the spec.
        model_required: whether ``--model`` must be given (else it is EMT).
        structures: whether it takes ``--structures`` (``"required"``) or not
            (``"none"``: it makes its own cells or reads them from a setting).
        out_required: whether ``--out`` must be given.
        stage: whether a study may run it as an evaluation stage (its result
            has flat ``<workflow>/<metric>`` metrics).
    """

    name: str
    settings: type
    run: Callable[..., dict[str, Any]]
    summary: Callable[..., str]
    doc: str
    model_fields: tuple[str, ...] = CORRECTIONS
    model_required: bool = False
    structures: Literal["required", "none"] = "required"
    out_required: bool = False
    stage: bool = True

    def inputs(
        self, mapping: Mapping[str, Any], where: str, model: str = "emt"
    ) -> tuple[ModelOptions, str | None, Any]:
        """(model options, structures spec, settings) from one mapping of settings.

        The mapping holds the settings dataclass's fields, the model corrections
        this workflow takes and, if it takes structures, ``structures``: what a
        study's stage lists under ``settings:``.

        Args:
            mapping: setting name -> value.
            where: names the mapping in errors.
            model: the model spec (``emt`` or a model file).

        Raises:
            ValueError: an unknown key (naming the closest valid one), a missing
                one or a value of the wrong type.
        """
        model_keys = names(ModelOptions, self.model_fields)
        settings_keys = names(self.settings)
        takes_structures = self.structures == "required"
        check_keys(
            mapping, [*model_keys, *settings_keys, *(["structures"] * takes_structures)], where
        )
        structures = mapping.get("structures")
        if takes_structures and not isinstance(structures, str):
            raise ValueError(
                f"{where}: setting 'structures' must name a file or builtin:NAME "
                f"(e.g. builtin:metals), got {structures!r}"
            )
        options = from_mapping(
            ModelOptions, {k: v for k, v in mapping.items() if k in model_keys}, where, model_keys
        )
        settings = from_mapping(
            self.settings, {k: v for k, v in mapping.items() if k in settings_keys}, where
        )
        return replace(options, spec=model), structures, settings


WORKFLOWS: dict[str, Workflow] = {
    "relax": Workflow(
        "relax", relax.RelaxSettings, relax.run, relax.summary, relax.__doc__, out_required=True
    ),
    "phonons": Workflow(
        "phonons",
        phonons.PhononSettings,
        phonons.run,
        phonons.summary,
        phonons.__doc__,
        out_required=True,
    ),
    "symmetry": Workflow(
        "symmetry", symmetry.SymmetrySettings, symmetry.run, symmetry.summary, symmetry.__doc__
    ),
    # its cells come from the strain-stress sets it is given
    "elastic": Workflow(
        "elastic",
        elastic.ElasticSettings,
        elastic.run,
        elastic.summary,
        elastic.__doc__,
        structures="none",
    ),
    # only the model: the corrections are what speed times, all of them
    "speed": Workflow(
        "speed",
        speed.SpeedSettings,
        speed.run,
        speed.summary,
        speed.__doc__,
        model_fields=(),
        structures="none",
    ),
    # variants choose force mode and averaging; labelled structures come from test_data
    "practical": Workflow(
        "practical",
        practical.PracticalSettings,
        practical.run,
        practical.summary,
        practical.__doc__,
        model_fields=(),
        model_required=True,
        structures="none",
        out_required=True,
        stage=False,
    ),
}
STAGE_WORKFLOWS = {name: w for name, w in WORKFLOWS.items() if w.stage}
