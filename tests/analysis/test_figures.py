"""Every figure rendered from a tiny synthetic study (no training), read back through
matplotlib's objects: legend entries, axis labels with units, the fitted formula,
the verdict of a flat fit, the band or why there is none, the trivial predictor's
line, plain tick labels and titles that overlap nothing."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis.scaling.analyse import analyse  # noqa: E402
from analysis.scaling.figparts import plain_number, plain_ticks, point_label  # noqa: E402
from analysis.scaling.load import load_study  # noqa: E402
from analysis.scaling.plots import figures, make_figures  # noqa: E402
from analysis.scaling.types import Run, Settings  # noqa: E402
from analysis.workflows.bandplot import (  # noqa: E402
    band_figure,
    model_label,
    plot_bands,
    structure_title,
)
from tests.analysis.scaling_synth import make_study, make_tuned_study  # noqa: E402

PET = {"E": 0.02, "A": 30.0, "alpha": 0.35, "B": 200.0, "beta": 0.30}
FLAT = {"E": 0.05, "B": 300.0, "beta": 0.32}  # no N term: L(N) is flat, alpha = 0
BASELINE = {"energy_per_atom_mae": 0.5, "forces_mae": 6.0}
METRIC = "val/forces_mae"
FAST = dict(num_bootstrap=40, loo_bootstrap=10, workers=1)


@pytest.fixture(scope="module")
def figs(tmp_path_factory):
    root = tmp_path_factory.mktemp("figstudy")
    make_study(
        root,
        {"pet-direct": PET, "mace": FLAT},
        [1e5, 3e5, 1e6, 3e6, 1e7],
        [1e6, 1e7, 1e8],
        noise=0.01,
        embedding=1e3,
        extra_for=lambda fam, i, j, v: {"baseline": BASELINE},
    )
    an = analyse(load_study(root), Settings(**FAST), [METRIC])
    out = figures(an, METRIC)
    for fig in out.values():
        fig.canvas.draw()
    yield an, out
    for fig in out.values():
        plt.close(fig)


def legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    assert leg is not None, "no legend"
    return [t.get_text() for t in leg.get_texts()]


def texts(ax, gid: str | None = None) -> list[str]:
    return [t.get_text() for t in ax.texts if gid is None or t.get_gid() == gid]


def tick_texts(axis) -> list[str]:
    labels = axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
    return [t.get_text() for t in labels if t.get_text()]


def assert_plain_ticks(ax):
    for axis in (ax.xaxis, ax.yaxis):
        got = tick_texts(axis)
        assert got, "no tick labels"
        for s in got:
            assert "$" not in s and "10^" not in s and "times" not in s, s


def assert_styles_in_legend(ax):
    """Every line style drawn with data has a legend entry of that style."""
    handles = ax.get_legend().legend_handles
    shown = {h.get_linestyle() for h in handles if isinstance(h, Line2D)}
    for line in ax.lines:
        if len(line.get_xdata()) and line.get_linestyle() not in ("None", ""):
            assert line.get_linestyle() in shown, (line.get_linestyle(), shown)


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_no_overlap(fig):
    """The suptitle and every axes' title, labels and notes overlap neither each
    other nor another panel."""
    r = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    notes = {t.get_text() for ax in axes for t in ax.texts if t.get_gid() == "fit-note"}
    parts = []
    for i, ax in enumerate(axes):
        for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts):
            if t.get_text() and t.get_gid() != "point-label" and t.get_gid() != "fit-warning":
                parts.append((i, t.get_text(), t.get_window_extent(r)))
    if fig._suptitle is not None:
        sup = fig._suptitle.get_window_extent(r)
        for _, text, box in parts:
            assert not boxes_overlap(sup, box), f"suptitle overlaps {text!r}"
        for ax in axes:
            assert not boxes_overlap(sup, ax.get_window_extent(r)), "suptitle overlaps a panel"
    for i, ti, bi in parts:
        for j, tj, bj in parts:
            if (i, ti) < (j, tj):
                assert not boxes_overlap(bi, bj), f"{ti!r} overlaps {tj!r}"
    frames = [ax.get_window_extent(r) for ax in axes]
    for i, text, box in parts:
        for j, frame in enumerate(frames):
            if j != i or text in notes:  # a fit's note sits under its own panel too
                assert not boxes_overlap(box, frame), f"{text!r} overlaps panel {j}"


def test_loss_vs_n_shows_formula_band_verdict_labels_and_trivial_predictor(figs):
    an, out = figs
    (ax,) = out["vs_N"].axes
    legend = legend_texts(ax)
    assert any(t.startswith("pet-direct: L(N) fit, α = 0.3") and "(good)" in t for t in legend)
    assert any(t.startswith("mace: L(N) fit, α = 0.00") and "(poor)" in t for t in legend)
    assert {"in the fit", "not in the fit", "95% band (bootstrap over runs)"} <= set(legend)
    assert "trivial predictor (zero forces): 6 eV/Å" in legend
    assert ax.get_xlabel() == "non-embedding parameters N"
    assert ax.get_ylabel() == "val/forces_mae (eV/Å)"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    notes = texts(ax, "fit-note")
    assert len(notes) == 2
    pet = next(t for t in notes if t.startswith("pet-direct"))
    assert "$L = " in pet and r"\,N^{-0.3" in pet and "α = 0.3" in pet and "[" in pet
    assert "no band" not in pet
    (warn,) = texts(ax, "fit-warning")
    assert warn.startswith("mace: POOR fit") and "interval reaches 0" in warn
    assert not any("pet-direct" in w for w in texts(ax, "fit-warning"))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == "band"]
    assert len(bands) == 2  # both L(N) fits have five runs for three parameters
    trivial = [ln for ln in ax.lines if ln.get_label().startswith("trivial predictor")]
    assert len(trivial) == 1 and set(trivial[0].get_ydata()) == {6.0}
    assert ax.get_ylim()[1] > 6.0  # the line is inside the view
    labels = set(texts(ax, "point-label"))
    assert {"n0, 100%", "n4, 100%", "n2, 10%", "n1, 1%"} <= labels
    assert_plain_ticks(ax)
    assert "1e6" in tick_texts(ax.xaxis)
    assert_styles_in_legend(ax)
    assert_no_overlap(out["vs_N"])


def test_loss_vs_d_says_why_there_is_no_band(figs):
    _, out = figs
    (ax,) = out["vs_D"].axes
    assert ax.get_xlabel() == "atoms seen D"
    notes = texts(ax, "fit-note")
    assert len(notes) == 2
    assert all("no band: 3 runs for 3 parameters" in t for t in notes)
    assert all(r"\,D^{-0." in t for t in notes)
    assert not [c for c in ax.collections if c.get_gid() == "band"]
    assert "95% band (bootstrap over runs)" not in legend_texts(ax)
    assert all("UNVERIFIED fit" in w for w in texts(ax, "fit-warning"))
    assert_plain_ticks(ax)
    assert_no_overlap(out["vs_D"])


def test_compute_figure_has_a_legend_entry_for_every_line_style(figs):
    _, out = figs
    (ax,) = out["vs_compute"].axes
    legend = legend_texts(ax)
    assert ax.get_xlabel() == "training compute C (FLOPs)"
    assert ax.get_ylabel() == "val/forces_mae (eV/Å)"
    assert "empirical lower envelope (thin steps)" in legend
    assert any(t.startswith("pet-direct: compute-optimal L(N, D), N_opt ~ C^") for t in legend)
    assert any(t.startswith("pet-direct: L(C) fit to the envelope, κ = ") for t in legend)
    assert {"on the envelope", "not on the envelope"} <= set(legend)
    assert any(t.startswith("trivial predictor") for t in legend)
    styles = {ln.get_linestyle() for ln in ax.lines if len(ln.get_xdata())}
    assert {"-", "-.", ":"} <= styles
    assert_styles_in_legend(ax)
    assert any(r"C^{-0." in t for t in texts(ax, "fit-note"))
    assert_plain_ticks(ax)
    assert "1e13" in tick_texts(ax.xaxis)
    assert_no_overlap(out["vs_compute"])


def test_residual_panels_and_suptitle_do_not_overlap(figs):
    _, out = figs
    fig = out["residuals"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 5  # L(N), L(D), L(N, D) against N and D, L(C)
    assert fig._suptitle.get_text().startswith(f"{METRIC}: residuals")
    for ax in axes:
        assert legend_texts(ax)[0].startswith("mace (")
        assert ax.get_xlabel() in {
            "non-embedding parameters N",
            "atoms seen D",
            "training compute C (FLOPs)",
        }
        assert_plain_ticks(ax)
    assert axes[0].get_ylabel() == "observed / fitted - 1 (%)"
    assert_no_overlap(fig)


def test_ratio_and_training_figures(figs):
    _, out = figs
    for ax in out["ratio"].axes:
        legend = legend_texts(ax)
        assert legend[0].startswith("fitted ") and "equal error" in legend
        assert ax.get_ylabel().startswith("error ratio ")
        assert ax.get_xlabel() in {
            "non-embedding parameters N",
            "atoms seen D",
            "training compute C (FLOPs)",
        }
        assert_plain_ticks(ax)
    assert_no_overlap(out["ratio"])
    (ax,) = out["training"].axes
    legend = legend_texts(ax)
    assert {"mace", "pet-direct", "finished run"} <= set(legend)
    assert any(t.startswith("trivial predictor") for t in legend)
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "val/forces_mae (eV/Å)"
    assert_styles_in_legend(ax)
    assert_no_overlap(out["training"])


def test_no_trivial_line_without_a_baseline(tmp_path):
    make_study(tmp_path, {"pet-direct": PET}, [1e5, 1e6, 1e7, 1e8], [1e8], noise=0.01)
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)), [METRIC])
    fig = figures(an, METRIC)["vs_N"]
    (ax,) = fig.axes
    assert not [t for t in legend_texts(ax) if "trivial" in t]
    assert not [ln for ln in ax.lines if ln.get_label().startswith("trivial")]
    plt.close(fig)


def test_tuned_figure(tmp_path):
    make_tuned_study(
        tmp_path, PET, [1e5, 1e6, 1e7], [1e8], [1e-3, 3e-3, 1e-2], best=lambda i, j: 3e-3
    )
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)), [METRIC])
    out = make_figures(an, tmp_path / "figs")
    assert (tmp_path / "figs" / "val-forces_mae_tuned.png").stat().st_size > 1000
    assert "tuned" in out[METRIC]
    fig = figures(an, METRIC)["tuned"]
    fig.canvas.draw()
    (ax,) = fig.axes
    legend = legend_texts(ax)
    assert "value chosen" in legend and len(legend) == 4  # three sizes and the star
    assert ax.get_xlabel() == "optim.lr" and ax.get_ylabel() == "val/forces_mae (eV/Å)"
    assert_plain_ticks(ax)
    assert "0.003" in tick_texts(ax.xaxis) or "0.005" in tick_texts(ax.xaxis)
    assert_no_overlap(fig)
    plt.close(fig)


def test_plain_tick_labels_on_a_log_axis():
    assert [plain_number(x) for x in (0.6, 20, 3000, 2e4, 1e6, 3e-5, 2.5e12, 0.30000000000000004)
            ] == ["0.6", "20", "3000", "20000", "1e6", "3e-5", "2.5e12", "0.3"]
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.45, 0.95])
    ax.set_yscale("log")
    plain_ticks(ax)
    fig.canvas.draw()
    got = tick_texts(ax.yaxis)
    assert "0.6" in got and not any("10^" in s or "$" in s for s in got)
    plt.close(fig)


def _bands() -> tuple[dict, dict]:
    x = np.concatenate([np.linspace(0, 1, 20), np.linspace(1, 1.6, 12)])  # a path break
    freqs = np.stack([3 * np.abs(np.sin(2 * x)), 4 * np.abs(np.sin(2 * x)), 5 + 0 * x], 1)
    result = {
        "path_x": x,
        "path_special_x": [0.0, 1.0, 1.0, 1.6],
        "path_labels": ["G", "X", "U", "G"],
        "path_frequencies_thz": freqs,
        "dos_frequencies_thz": np.linspace(0, 6, 30),
        "dos": np.exp(-((np.linspace(0, 6, 30) - 4) ** 2)),
        "formula": "Cu",
    }
    return result, {**result, "path_frequencies_thz": 1.05 * freqs}


def test_phonon_band_figure_names_model_reference_and_structure(tmp_path):
    result, ref = _bands()
    spec = "/scratch/me/runs/demo/runs/pet_s/model.pt"
    name = model_label(spec, spec + "[conservative]")
    assert name == "pet_s/model.pt[conservative]"
    title = structure_title("cu-fcc", result["formula"])
    fig = band_figure(result, ref, title, name, model_label("emt"))
    fig.canvas.draw()
    ax, ax_dos = fig.axes
    assert legend_texts(ax) == ["model: pet_s/model.pt[conservative]", "reference: emt"]
    sup = fig._suptitle.get_text()
    assert sup == "Phonon bands: cu-fcc (Cu)" and "/" not in sup
    assert ax.get_ylabel() == "frequency (THz)" and ax_dos.get_xlabel() == "DOS (states/THz)"
    assert [t.get_text() for t in ax.get_xticklabels()] == [r"$\Gamma$", "X|U", r"$\Gamma$"]
    ref_lines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(ref_lines) == 2 * 3  # two path segments, three bands
    assert_no_overlap(fig)
    plt.close(fig)
    plot_bands(result, tmp_path / "bands.png", None, structure_title("cu-fcc", "Cu"))
    assert (tmp_path / "bands.png").stat().st_size > 1000
    assert structure_title("structures/al.cif", "Al") == "Phonon bands: al.cif (Al)"
    assert Path(spec).parts[-1] in name


def test_point_labels_tell_the_branches_of_a_ladder_apart():
    plain = Run("a", "a", size="w16", axes={"data_fraction": 0.5})
    assert point_label(plain) == "w16, 50%"
    branches = [Run(f"b{k}", "b", size="w16", axes={"data_fraction": 1.0},
                    ladder={"role": "cooldown", "decay_at": f}) for k, f in enumerate((0.25, 1.0))]
    assert [point_label(r) for r in branches] == ["w16, 100%, cd@0.25", "w16, 100%, cd@1"]


def test_one_size_study_labels_apart_no_fit_note_and_even_tick_sizes(tmp_path):
    """The smoke study's shape: one size, two data fractions with nearly equal
    errors. Its two point labels would print on top of each other, and the N
    figure has points but no curve: it must say why."""
    flat = {"E": 0.35, "B": 0.01, "beta": 0.3}
    make_study(tmp_path, {"pet-direct": flat}, [5e3], [2e3, 4e3], noise=0.0)
    an = analyse(load_study(tmp_path), Settings(**FAST), [METRIC])
    out = figures(an, METRIC)
    fig = out["vs_N"]
    fig.canvas.draw()
    (ax,) = fig.axes
    r = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_gid() == "point-label"]
    assert sorted(t.get_text() for t in labels) == ["n0, 100%", "n0, 50%"]
    a, b = (t.get_window_extent(r) for t in labels)
    assert not boxes_overlap(a, b), "point labels print over each other"
    (note,) = texts(ax, "fit-note")
    assert note.startswith("pet-direct: no L(N) fit") and "share one N = 5000" in note
    assert "pet-direct (no fit)" in legend_texts(ax)
    assert_no_overlap(fig)
    for kind, f in out.items():
        for a_ in f.axes:
            for axis in (a_.xaxis, a_.yaxis):
                sizes = {
                    t.get_fontsize()
                    for t in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
                    if t.get_text() and t.get_visible()
                }
                assert len(sizes) <= 1, (kind, sizes)
        plt.close(f)


def test_phonon_figure_of_a_flat_model_spectrum_says_why_the_dos_is_empty():
    result, ref = _bands()
    flat = {**result, "path_frequencies_thz": 0 * result["path_frequencies_thz"],
            "dos": np.zeros(0), "dos_frequencies_thz": np.zeros(0)}
    fig = band_figure(flat, ref, "Phonon bands: al-fcc (Al)", "m", "emt")
    fig.canvas.draw()
    ax, ax_dos = fig.axes
    assert [t.get_text() for t in ax_dos.texts if t.get_gid() == "no-dos"] == [
        "no DOS:\nevery model\nfrequency is\n0 THz"]
    zero = [ln for ln in ax.lines if set(ln.get_ydata()) == {0.0} and ln.get_color() == "k"]
    model = [ln for ln in ax.lines if ln.get_label() == "model: m"]
    assert zero and model and zero[0].get_zorder() < model[0].get_zorder()
    plt.close(fig)
