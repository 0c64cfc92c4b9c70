"""The phonon band figure: model bands (solid) against the reference (dashed)
along the high-symmetry path, and the model's DOS beside them.

Pure plotting from arrays (the ``compute_phonons`` result keys), so that it can
be drawn and checked without a calculator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def model_label(spec: str, description: str | None = None) -> str:
    """A short legend name of a model: a file spec loses all but its last two path
    parts ("runs/demo/runs/pet_s/model.pt[rot3]" -> "pet_s/model.pt[rot3]")."""
    desc = description if description is not None else spec
    if "/" in spec or "\\" in spec:
        parts = Path(spec).parts
        desc = "/".join(parts[-2:]) + desc[len(spec) :] if desc.startswith(spec) else desc
    return desc


def structure_title(name: str, formula: str | None) -> str:
    """ "Phonon bands: cu-fcc (Cu)", naming the structure and never a file."""
    name = Path(name).name if ("/" in name or "\\" in name) else name
    if formula and formula != name:
        return f"Phonon bands: {name} ({formula})"
    return f"Phonon bands: {name}"


def band_figure(
    result: dict,
    reference: dict | None = None,
    title: str = "",
    model: str = "model",
    reference_name: str = "reference",
):
    """The figure (not saved): bands of ``result`` and, dashed, of ``reference``.

    Args:
        result: ``path_x``, ``path_special_x``, ``path_labels``,
            ``path_frequencies_thz`` (points x bands), ``dos`` and
            ``dos_frequencies_thz``.
        reference: the same path keys of the reference, or None.
        title: the figure title (the structure).
        model, reference_name: legend names of the two calculations.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_dos) = plt.subplots(
        1,
        2,
        figsize=(8, 4.4),
        sharey=True,
        gridspec_kw={"width_ratios": [3, 1]},
        layout="constrained",
    )
    x = np.asarray(result["path_x"])
    # ASE repeats x at a path break (e.g. "K,U"): plot segments separately so no
    # vertical line joins unrelated q-points, and merge the two labels.
    cuts = [0, *(np.flatnonzero(np.diff(x) == 0) + 1).tolist(), len(x)]
    handles = {}
    for start, stop in zip(cuts[:-1], cuts[1:]):
        seg = slice(start, stop)
        if reference is not None:
            ref_freqs = np.asarray(reference["path_frequencies_thz"])[seg]
            lines = ax.plot(x[seg], ref_freqs, color="0.45", ls="--", lw=1, zorder=3)
            handles.setdefault("reference", lines[0]).set_label(f"reference: {reference_name}")
        lines = ax.plot(x[seg], np.asarray(result["path_frequencies_thz"])[seg], color="C0", lw=1.2)
        handles.setdefault("model", lines[0]).set_label(f"model: {model}")
    ticks: list[float] = []
    labels: list[str] = []
    for sx, lab in zip(result["path_special_x"], result["path_labels"]):
        lab = r"$\Gamma$" if lab == "G" else lab
        if ticks and abs(sx - ticks[-1]) < 1e-9:
            labels[-1] += "|" + lab
        else:
            ticks.append(sx)
            labels.append(lab)
    for sx in ticks:
        ax.axvline(sx, color="0.8", lw=0.8)
    ax.axhline(0.0, color="k", lw=0.6, zorder=1)  # under the bands: a flat model shows
    ax.set_xticks(ticks, labels)
    ax.set_xlim(x[0], x[-1])
    ax.set_xlabel("wave vector (high-symmetry path)")
    ax.set_ylabel("frequency (THz)")
    order = [handles[k] for k in ("model", "reference") if k in handles]
    ax.legend(handles=order, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize=8)
    dos = np.asarray(result["dos"])
    if dos.size:
        ax_dos.plot(dos, result["dos_frequencies_thz"], color="C0", label="model")
    else:
        # phonopy gives no DOS for a flat spectrum: say so rather than leave a blank panel
        top = float(np.abs(np.asarray(result["path_frequencies_thz"])).max())
        ax_dos.text(0.5, 0.5, f"no DOS:\nevery model\nfrequency is\n{top:.2g} THz",
                    transform=ax_dos.transAxes, ha="center", va="center", fontsize=8,
                    gid="no-dos")
        ax_dos.set_xticks([])
    ax_dos.set_xlabel("DOS (states/THz)")
    ax_dos.set_title("model DOS", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_bands(
    result: dict,
    path: Path,
    reference: dict | None = None,
    title: str = "",
    model: str = "model",
    reference_name: str = "reference",
) -> None:
    """The band figure (see `band_figure`) saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = band_figure(result, reference, title, model, reference_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
