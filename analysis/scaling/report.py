"""Outputs of a scaling analysis: fits.json, runs.csv, figures, report.md, W&B.

What fits.json holds is :mod:`analysis.scaling.fitsjson`; report.md is laid out
by :mod:`analysis.scaling.markdown`; the figures are :mod:`analysis.scaling.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# fits.json and report.md are built by these; callers reach them through here too
from analysis.scaling.fitsjson import SCHEMA_VERSION, entry_json, fits_json  # noqa: F401
from analysis.scaling.load import write_csv
from analysis.scaling.markdown import report_md
from analysis.scaling.sentences import law_sentences  # noqa: F401
from analysis.scaling.types import Analysis
from data_pipelines.atomic import write_json


def summary_lines(an: Analysis) -> list[str]:
    """One line per fit, for the terminal."""
    out = [f"{sum(r.finished for r in an.runs)}/{len(an.runs)} runs finished"]
    for e in an.entries():
        p, ci = e.result.params, e.result.ci
        parts = []
        for k in e.result.law.param_names:
            c = f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if ci[k] else ""
            parts.append(f"{k}={p[k]:.3g}{c}")
        still = f", {len(e.still_improving)} still improving" if e.still_improving else ""
        out.append(
            f"{e.family:<18} {e.metric:<26} L({','.join(e.result.law.axes)}) "
            f"{e.result.law.form:<6} {' '.join(parts)} ({e.result.quality['verdict']}{still})"
        )
    # one line for every law not fitted, not one per law and metric: the reasons
    # (too few runs, one value of an axis) are in report.md, "Not fitted"
    laws: dict[str, list[str]] = {}
    for k in an.skipped:
        name = f"L({k['law']})"
        if name not in laws.setdefault(k["family"], []):
            laws[k["family"]].append(name)
    if laws:
        which = "; ".join(f"{fam} {', '.join(names)}" for fam, names in laws.items())
        out.append(f"not fitted ({len(an.skipped)}, why: report.md, Not fitted): {which}")
    return out


def write_all(an: Analysis, out: Path, inputs: list[str], figures: bool = True) -> dict:
    """runs.csv, figures/, fits.json and report.md under `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(an.runs, out / "runs.csv")
    figs: dict = {}
    if figures:
        from analysis.scaling.plots import make_figures

        figs = make_figures(an, out / "figures")
    data = fits_json(an, inputs)
    data["figures"] = {
        m: {k: [f"figures/{f}" for f in v] for k, v in kinds.items()} for m, kinds in figs.items()
    }
    write_json(out / "fits.json", data, indent=1)
    (out / "report.md").write_text(report_md(an, figs, inputs))
    return {
        "fits": out / "fits.json",
        "report": out / "report.md",
        "runs": out / "runs.csv",
        "figures": figs,
    }


# --- W&B --------------------------------------------------------------------------


def wandb_target(
    an: Analysis,
    mode: str,
    project: str | None,
    entity: str | None,
    group: str | None,
    env: Mapping[str, str],
) -> dict | None:
    """Where to upload, or None. `auto` follows the runs' own logger settings; a
    WANDB_MODE of offline/disabled in the environment always wins, so an offline
    setup never touches the network."""
    env_mode = env.get("WANDB_MODE", "").lower()
    if mode == "off" or env_mode == "disabled":
        return None
    cfg = next((r.config for r in an.runs if r.finished and r.config), {})
    logger = cfg.get("logger") if isinstance(cfg.get("logger"), dict) else {}
    if mode == "auto":
        if logger.get("kind") != "wandb":
            return None
        mode = logger.get("mode") or "offline"
    if env_mode in ("offline", "dryrun"):
        mode = "offline"
    return {
        "mode": mode,
        "project": project or logger.get("project") or "mlip-scaling",
        "entity": entity or logger.get("entity"),
        "group": group or logger.get("group") or cfg.get("study"),
    }


def upload_wandb(
    an: Analysis, out: Path, mode: str, project: str, entity: str | None, group: str | None
) -> bool:
    """Log the fitted laws (table + summary), figures and fits.json to W&B.

    Never fails the analysis: the files on disk are the record, W&B a mirror.
    """
    try:
        import wandb
    except ImportError:
        print("W&B upload skipped: wandb is not installed")
        return False
    out = Path(out)
    try:
        run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            mode=mode,
            job_type="scaling-analysis",
            name=f"scaling-{group or 'study'}",
            dir=str(out),
            config={"settings": vars(an.settings)},
        )
        table = wandb.Table(
            columns=[
                "family",
                "metric",
                "law",
                "form",
                "param",
                "value",
                "ci_low",
                "ci_high",
                "verdict",
            ]
        )
        summary = {}
        for e in an.entries():
            ci = e.result.ci
            for k, v in e.result.params.items():
                lo, hi = ci[k] if ci[k] else (None, None)
                table.add_data(
                    e.family,
                    e.metric,
                    e.law_name,
                    e.result.law.form,
                    k,
                    v,
                    lo,
                    hi,
                    e.result.quality["verdict"],
                )
                summary[f"{e.family}/{e.metric}/{e.law_name}/{k}"] = v
        images = {
            f"figures/{p.stem}": wandb.Image(str(p))
            for p in sorted((out / "figures").glob("*.png"))
        }
        run.log({"scaling/fits": table, **images})
        run.summary.update(summary)
        art = wandb.Artifact("scaling-report", type="analysis")
        for name in ("fits.json", "report.md", "runs.csv"):
            if (out / name).is_file():
                art.add_file(str(out / name))
        run.log_artifact(art)
        run.finish()
    except Exception as err:  # noqa: BLE001 - a mirror failing must not lose the report
        print(f"W&B upload failed ({type(err).__name__}: {err}); the report is on disk")
        return False
    return True
