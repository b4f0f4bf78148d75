"""Every figure on the presets' own grids (synthetic runs shaped like the presets' sweeps): no text collides.

The sweeps below have the shapes of ``conf/experiment/``: Hong Fig. 4a (10 poison ratios × 5 clip norms at σ = 0,
plus vanilla), Fig. 4b (σ ∈ {1e-1, 1e-3, 1e-5, 1e-7} at C = 4), Fig. 5 (σ from 0 to 4 at C = 4, two models), and
the README's fused clip × noise grid. Values are synthetic; the columns are those ``load_runs`` and
``load_history`` return.
"""

from __future__ import annotations

import itertools
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from gsdefense import plots  # noqa: E402
from gsdefense.analysis import add_defense  # noqa: E402

HONG_RATIOS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4)
HONG_CLIPS = (8.0, 4.0, 2.0, 1.0, 0.1)
FIG4B_NOISES = (0.1, 1e-3, 1e-5, 1e-7)
FIG5_NOISES = (0.0, 0.001, 0.01, 0.1, 0.4, 0.8, 1.0, 2.0, 4.0)
GRID_CLIPS = (0.1, 0.5, 1.0, 2.0, 4.0)
GRID_NOISES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def _epsilon(noise: float) -> float | None:
    # Roughly the shape of an RDP accountant's ε over 40 epochs; σ = 0 has no privacy (null, as metrics.json).
    return None if noise == 0 else float(2.0 / noise + 0.5 / noise**2)


def _row(rng: np.random.Generator, *, attack: str, ratio: float, seed: int, dp: dict, backdoor: bool) -> dict:
    clip, noise = dp.get("dp.clip"), dp.get("dp.noise")
    shaped = clip is not None
    rad = 0.03 + 0.4 * ratio * (min(clip, 4.0) / 4.0 if shaped else 1.0) + 0.05 * (noise or 0) / 8
    rad = float(rad + rng.normal(0, 0.01))
    acc = float(0.95 * (1 - rad))
    row = {
        "dataset.name": "fashion_mnist_3_4",
        "model.name": dp.pop("model.name", "lr"),
        "attack.name": attack,
        "attack.poison_ratio": ratio,
        "seed": seed,
        **dp,
        "status": "ok",
        "clean_acc": acc,
        "rad": rad,
        "asr": float(np.clip(0.2 + ratio + 0.5 / (1 + (noise or 0)) + rng.normal(0, 0.02), 0, 1)) if backdoor else None,
        "epsilon": _epsilon(noise) if shaped else None,
        "run_dir": f"/sweep/{attack}/{ratio}/{clip}/{noise}/{seed}",
    }
    return row


def preset_runs(shape: str, *, seeds: int = 3) -> pd.DataFrame:
    """Runs frames of the presets' grids: ``fig4a``, ``fig4b``, ``fig5``, ``grid`` (see the module docstring)."""
    rng = np.random.default_rng(0)
    rows = []
    vanilla = {"dp.name": "none"}
    if shape == "fig4a":
        settings = [vanilla] + [{"dp.name": "dpsgd", "dp.clip": c, "dp.noise": 0.0} for c in HONG_CLIPS]
        grid = itertools.product(["label_flip"], HONG_RATIOS, settings)
    elif shape == "fig4b":
        settings = [vanilla] + [{"dp.name": "dpsgd", "dp.clip": 4.0, "dp.noise": s} for s in (0.0, *FIG4B_NOISES)]
        grid = itertools.product(["steinhardt"], HONG_RATIOS, settings)
    elif shape == "fig5":
        settings = [
            {"dp.name": "dpsgd", "dp.clip": 4.0, "dp.noise": s, "model.name": m}
            for s in FIG5_NOISES
            for m in ("lr", "mlp")
        ]
        grid = itertools.product(["poison_frogs"], [0.0], settings)
    elif shape == "grid":
        settings = [vanilla] + [
            {"dp.name": "dpsgd", "dp.clip": c, "dp.noise": s} for c in GRID_CLIPS for s in GRID_NOISES
        ]
        grid = itertools.product(["blend", "badnets"], [0.1], settings)
    else:
        raise ValueError(shape)
    for (attack, ratio, dp), seed in itertools.product(grid, range(seeds)):
        rows.append(_row(rng, attack=attack, ratio=ratio, seed=seed, dp=dict(dp), backdoor=attack != "label_flip"))
    return add_defense(pd.DataFrame(rows))


def preset_history(
    shape: str, *, epochs: int = 40, seeds: int = 3, spike: bool = True, old_names: bool = False
) -> pd.DataFrame:
    """Per-epoch history of a preset's runs, gradient telemetry included; one run has a 1000× ratio spike.

    ``old_names``: the telemetry columns of runs written before the rename (``grad_ratio`` …, no per-sample
    clipped ratio or cosines).
    """
    runs = preset_runs(shape, seeds=seeds)
    rng = np.random.default_rng(1)
    frames = []
    for i, run in enumerate(runs.to_dict("records")):
        epoch = np.arange(1, epochs + 1)
        shaped = not pd.isna(run.get("dp.clip"))
        ratio = 1.0 + 3.0 * run["attack.poison_ratio"] + 2.0 / epoch + rng.lognormal(0, 0.2, epochs)
        if spike and i == 7:
            ratio[epochs // 2] *= 1000.0  # one exploding gradient: the figure must stay readable
        sample_ratio = 1.5 + 2.0 / epoch + rng.lognormal(-1, 0.2, epochs)
        clip = min(run["dp.clip"], 4.0) / 4.0 if shaped else 1.0
        telemetry = {
            "mean_grad_ratio": ratio,
            "mean_grad_cosine": -0.4 - 0.5 * (1 - np.exp(-epoch / 10)) + rng.normal(0, 0.03, epochs),
            "shaped_mean_grad_ratio": np.minimum(ratio, 1.2) if shaped else np.nan,
            "shaped_mean_grad_cosine": (-0.2 + rng.normal(0, 0.03, epochs)) if shaped else np.nan,
            "sample_norm_ratio": sample_ratio,
            "clipped_sample_norm_ratio": 1.0 + (sample_ratio - 1.0) * clip if shaped else np.nan,
            "poison_sample_cosine": -0.3 + 0.2 * (1 - np.exp(-epoch / 10)) + rng.normal(0, 0.03, epochs),
            "clean_sample_cosine": 0.3 + 0.1 * (1 - np.exp(-epoch / 10)) + rng.normal(0, 0.03, epochs),
        }
        if old_names:
            telemetry = {k.replace("mean_grad", "grad"): v for k, v in telemetry.items() if "sample" not in k}
            telemetry["sample_norm_ratio"] = sample_ratio
        hist = pd.DataFrame(
            {
                "epoch": epoch,
                "train_loss": 2.3 * np.exp(-epoch / 6) + 0.05 + rng.lognormal(-5, 0.3, epochs),
                "clean_acc": run["clean_acc"] * (1 - np.exp(-epoch / 4)),
                "asr": None if run["asr"] is None else run["asr"] * (1 - np.exp(-epoch / 8)),
                **telemetry,
            }
        )
        for key, value in run.items():
            if key not in hist and key not in ("clean_acc", "asr", "rad", "epsilon"):
                hist[key] = [value] * len(hist)
        frames.append(hist)
    return pd.concat(frames, ignore_index=True)


def drawn_texts(fig: Figure) -> list[Text]:
    """Every non-empty text the renderer actually draws (tick labels in view, legends, titles, annotations)."""
    drawn: list[Text] = []
    draw = Text.draw

    def record(self: Text, renderer) -> None:
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        draw(self, renderer)

    Text.draw = record
    try:
        fig.canvas.draw()
    finally:
        Text.draw = draw
    return drawn


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose bounding boxes overlap (by more than half a pixel)."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer).padded(-0.5) for t in texts]
    return [
        (texts[i].get_text(), texts[j].get_text())
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if boxes[i].overlaps(boxes[j])
    ]


def assert_readable(fig: Figure) -> None:
    """No two texts collide, and the figure is drawn (lines, markers or images)."""
    pairs = overlapping_texts(fig)
    assert not pairs, f"overlapping texts: {pairs[:10]}"
    assert sum(len(ax.lines) + len(ax.collections) + len(ax.images) for ax in fig.axes) > 0
    plt.close(fig)


RUN_FIGURES = ["rad_vs_poison_ratio", "asr_rad_vs_dp", "utility_heatmap", "privacy_tradeoff"]
CASES = [
    ("fig4a", "rad_vs_poison_ratio"),
    ("fig4a", "asr_rad_vs_dp"),
    ("fig4a", "utility_heatmap"),
    ("fig4b", "rad_vs_poison_ratio"),
    ("fig4b", "asr_rad_vs_dp"),
    ("fig4b", "utility_heatmap"),
    ("fig4b", "privacy_tradeoff"),
    ("fig5", "asr_rad_vs_dp"),
    ("fig5", "utility_heatmap"),
    ("fig5", "privacy_tradeoff"),
    ("grid", "asr_rad_vs_dp"),
    ("grid", "utility_heatmap"),
    ("grid", "privacy_tradeoff"),
]


@pytest.mark.parametrize(("shape", "name"), CASES)
def test_run_figures_have_no_colliding_text(shape: str, name: str) -> None:
    assert_readable(getattr(plots, name)(preset_runs(shape)))


@pytest.mark.parametrize("shape", ["fig4a", "grid"])
@pytest.mark.parametrize("name", ["gradient_telemetry", "training_curves"])
def test_history_figures_have_no_colliding_text(shape: str, name: str) -> None:
    assert_readable(getattr(plots, name)(preset_history(shape, epochs=20)))


def legend_texts(fig: Figure) -> list[str]:
    """The entries of the figure's only legend."""
    (legend,) = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for t in legend.get_texts()]


def _tick_labels(ax, axis: str = "x") -> list[str]:
    return [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")() if t.get_text()]


def test_rad_vs_poison_ratio_labels_every_ratio_of_hongs_grid() -> None:
    fig = plots.rad_vs_poison_ratio(preset_runs("fig4a"))
    (ax,) = fig.axes
    assert _tick_labels(ax) == ["0%", "1%", "2%", "3%", "4%", "5%", "10%", "20%", "30%", "40%"]
    assert list(ax.get_xticks()) == list(range(10))  # one evenly spaced position per swept ratio
    assert "not to scale" in ax.get_xlabel()
    assert legend_texts(fig) == ["vanilla", "C=0.1", "C=1", "C=2", "C=4", "C=8"]
    assert "σ = 0" in fig.get_suptitle() and "mean ± sd over 3 seeds" in fig.get_suptitle()
    lo, hi = ax.get_ylim()
    assert lo <= 0 <= hi and hi - lo >= 0.1  # RAD keeps its zero
    plt.close(fig)


def test_rad_vs_poison_ratio_evenly_spaced_grid_stays_linear() -> None:
    runs = preset_runs("fig4a")
    runs = runs[runs["attack.poison_ratio"].isin([0.0, 0.1, 0.2, 0.3, 0.4])]
    fig = plots.rad_vs_poison_ratio(runs)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert "not to scale" not in ax.get_xlabel()
    plt.close(fig)


def test_asr_rad_vs_dp_draws_one_line_per_sigma_and_per_clip() -> None:
    fig = plots.asr_rad_vs_dp(preset_runs("grid"))
    vs_clip = [ax for ax in fig.axes if ax.get_xlabel() == "clip norm C"]
    vs_noise = [ax for ax in fig.axes if ax.get_xlabel() == "noise multiplier σ"]
    assert len(vs_clip) == len(vs_noise) == 4  # (badnets, blend) × (asr, rad)
    # errorbar draws one data line per series (plus caps); the dashed vanilla line is an extra Line2D.
    series = lambda ax: [ln for ln in ax.lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) > 1]  # noqa: E731
    assert {len(series(ax)) for ax in vs_clip} == {len(GRID_NOISES)}
    assert {len(series(ax)) for ax in vs_noise} == {len(GRID_CLIPS)}
    for ax in fig.axes:
        if ax.get_ylabel() == "attack success rate":
            assert ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1  # a 2-point difference stays small
        if ax.get_ylabel() == "RAD":
            assert ax.get_ylim()[0] <= 0 and np.diff(ax.get_ylim())[0] >= 0.1
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends and all(len(lg.get_texts()) > 1 for lg in legends)
    assert [t.get_text() for t in legends[0].get_texts()][-1] == "vanilla (no DP)"
    plt.close(fig)


def test_asr_rad_vs_dp_single_clip_has_no_one_entry_legend() -> None:
    fig = plots.asr_rad_vs_dp(preset_runs("fig4b"))
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is None or len(legend.get_texts()) > 1
    assert all(ax.get_xlabel() == "noise multiplier σ" for ax in fig.axes)  # no clip sweep: no clip panel
    assert all("C = 4" in ax.get_title() for ax in fig.axes)
    plt.close(fig)


def _line_colors(fig: Figure) -> set[tuple]:
    return {matplotlib.colors.to_rgb(ln.get_color()) for ax in fig.axes for ln in ax.lines if ln.get_color() != "0.6"}


def test_gradient_telemetry_log_ratio_labels_and_palettes() -> None:
    hist = preset_history("fig4a", epochs=20)
    fig = plots.gradient_telemetry(hist)
    raw, clipped, batch_ratio, poisons, clean, batch_cosine = fig.axes
    assert [ax.get_yscale() for ax in fig.axes] == ["log"] * 3 + ["linear"] * 3
    assert "‖g_i‖" in raw.get_ylabel() and "cos(g_i" in poisons.get_ylabel() and raw.get_xlabel() == "epoch"
    assert [ax.get_title() for ax in (raw, clipped, poisons, clean)] == [
        "per sample, as computed", "per sample, after clipping", "poisons", "clean samples"
    ]  # fmt: skip
    # The original's batch-mean metrics are the secondary column, marked, and the title says why.
    assert all(ax.get_title().startswith("original's batch-mean") for ax in (batch_ratio, batch_cosine))
    assert "tend to n_clean/n_poison and −1 near convergence" in fig.get_suptitle().replace("\n", " ")
    # As computed and after clipping share one y range: clipping's effect reads off directly.
    assert raw.get_ylim() == clipped.get_ylim()
    # The 1000× spike of one run does not stretch the axis: the median over 3 seeds ignores it.
    assert batch_ratio.get_ylim()[1] < 20
    assert "at poison ratio = 40%" in fig.get_suptitle()
    viridis = {matplotlib.colors.to_rgb(plt.get_cmap("viridis")(x)) for x in np.linspace(0, 0.85, len(HONG_CLIPS))}
    assert viridis <= _line_colors(fig)  # clip norms are ordered: a sequential palette
    assert all(ln.get_linestyle() == "-" for ax in fig.axes for ln in ax.lines)  # no dashed twins to tell apart
    plt.close(fig)
    # Clip and noise both vary: unordered settings get a qualitative palette.
    grid = preset_history("grid", epochs=5)
    grid = grid[grid["dp.clip"].isin([0.1, 4.0]) & grid["dp.noise"].isin([0.5, 8.0]) | (grid["dp.name"] == "none")]
    fig = plots.gradient_telemetry(grid)
    tab10 = {matplotlib.colors.to_rgb(c) for c in plt.get_cmap("tab10").colors[:4]}
    assert tab10 <= _line_colors(fig)
    plt.close(fig)


def test_gradient_telemetry_of_runs_before_the_rename() -> None:
    """Old history.csv files (grad_ratio …, no per-sample cosines): drawn from the columns they have."""
    fig = plots.gradient_telemetry(preset_history("fig4a", epochs=8, old_names=True))
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["per sample, as computed", "original's batch-mean ratio*", "original's batch-mean cosine*"]
    assert_readable(fig)


def _telemetry_runs(n_runs: int) -> pd.DataFrame:
    """A history of ``n_runs`` runs: BadNets on a clip × noise grid plus vanilla, seeds filling the count."""
    grids = {6: (GRID_CLIPS, (0.5,), 1), 40: ((0.1, 1.0, 4.0), (0.5, 2.0, 4.0), 4), 200: (GRID_CLIPS, GRID_NOISES, 5)}
    clips, noises, seeds = grids[n_runs]
    hist = preset_history("grid", epochs=12, seeds=seeds)
    keep = (hist["dp.name"] == "none") | (hist["dp.clip"].isin(clips) & hist["dp.noise"].isin(noises))
    hist = hist[keep & (hist["attack.name"] == "badnets")]
    runs = hist["run_dir"].unique()
    return hist[hist["run_dir"].isin(runs[:n_runs])]


@pytest.mark.parametrize("n_runs", [6, 40, 200])
def test_gradient_telemetry_reads_at_6_40_and_200_runs(n_runs: int) -> None:
    hist = _telemetry_runs(n_runs)
    assert hist["run_dir"].nunique() == n_runs
    fig = plots.gradient_telemetry(hist)
    for ax in fig.axes:
        lines = [ln for ln in ax.lines if ln.get_color() != "0.6"]  # the grey reference line aside
        assert len(lines) <= 9  # one median line per setting (≤ 8 DP settings and vanilla), however many runs
    assert_readable(fig)


def test_training_curves_log_loss_bounded_accuracy_and_aspect() -> None:
    fig = plots.training_curves(preset_history("grid", epochs=20))
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    assert by_label["train loss"].get_yscale() == "log"
    assert by_label["clean accuracy"].get_ylim() == pytest.approx((-0.04, 1.04))
    for ax in fig.axes:
        box = ax.get_window_extent()
        assert 1.0 <= box.width / box.height <= 2.0
    plt.close(fig)


def test_privacy_tradeoff_shows_infinite_epsilon_and_names_its_points() -> None:
    fig = plots.privacy_tradeoff(preset_runs("fig5"))
    ax = fig.axes[0]
    assert _tick_labels(ax)[-1] == "∞"  # σ = 0 runs are shown, at ε = ∞
    entries = legend_texts(fig)
    assert entries[0] == "σ" and entries[1:] == [f"{s:g}" for s in FIG5_NOISES]
    assert "C = 4" in fig.get_suptitle()  # one clip norm: said once, not a legend
    plt.close(fig)


def test_privacy_tradeoff_skip_names_the_cause() -> None:
    with pytest.raises(ValueError, match=r"no run has a finite ε \(150 DP runs have σ = 0") as err:
        plots.privacy_tradeoff(preset_runs("fig4a"))
    assert "\n" not in str(err.value) and "30 runs are vanilla" in str(err.value)


def test_privacy_tradeoff_counts_runs_left_out() -> None:
    runs = preset_runs("grid")
    adaptive = runs["dp.noise"] == 8.0
    runs.loc[adaptive, "dp.name"] = "adaptive"
    runs.loc[adaptive, "epsilon"] = None
    fig = plots.privacy_tradeoff(runs)
    assert "left out: 30 DP runs with σ > 0 but no ε (dp.name: adaptive)" in fig.get_suptitle().replace("\n", " ")
    plt.close(fig)


def test_figures_ignore_runs_that_are_not_ok() -> None:
    runs = preset_runs("fig4a")
    stale = runs.index[:40]
    runs.loc[stale, "status"] = "stale"
    runs.loc[stale, "rad"] = 99.0  # another config's numbers must never reach a figure
    fig = plots.rad_vs_poison_ratio(runs)
    assert fig.axes[0].get_ylim()[1] < 1
    plt.close(fig)


def test_gradient_telemetry_draws_one_line_per_swept_intensity() -> None:
    """Hong Fig. 1 (preset hong_fig1_collision): vanilla only, one line per collision intensity α."""
    hist = preset_history("fig4a", epochs=10)
    hist = hist[hist["dp.name"] == "none"].copy()
    alphas = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    hist = hist[hist["attack.poison_ratio"] == 0.4].drop(columns="attack.poison_ratio")
    hist = pd.concat([hist.assign(**{"attack.alpha": a, "run_dir": hist["run_dir"] + f"/{a}"}) for a in alphas])
    fig = plots.gradient_telemetry(hist)
    assert legend_texts(fig)[:6] == [f"alpha={a:g}" for a in alphas]
    assert "vanilla" in fig.get_suptitle()
    assert_readable(fig)


@pytest.mark.parametrize("spec", plots.FIGURES, ids=lambda spec: spec.name)
def test_every_registered_figure_is_readable_or_says_why(spec: plots.FigureSpec) -> None:
    """Any figure in FIGURES (new ones included): drawn without colliding text, or skipped in one named line."""
    for shape in ("fig4a", "grid"):
        frame = preset_runs(shape) if spec.source == "runs" else preset_history(shape, epochs=8)
        try:
            fig = spec.make(frame)
        except ValueError as err:
            assert str(err).startswith(f"{spec.name}: ") and "\n" not in str(err)
            continue
        assert_readable(fig)


# --- multi-attack sweeps (preset nc_vs_dp), the vanilla line, dodge, mixed datasets ------------------------------

# nc_vs_dp's attacks, each at its own poison ratio, with its own settings and a band its values stay in.
NC_ATTACKS = {
    "badnets": {"ratio": 0.1, "extra": {}, "asr": 0.9, "rad": 0.3},
    "blend": {"ratio": 0.1, "extra": {"attack.pattern_seed": 0.0}, "asr": 0.5, "rad": 0.2},
    "narcissus": {"ratio": 0.01, "extra": {"attack.test_magnification": 3.0}, "asr": 0.1, "rad": 0.1},
}
BAND = 0.06


def nc_runs(*, vanilla: bool, more_ratios: bool = False, seeds: int = 3) -> pd.DataFrame:
    """The nc_vs_dp grid (3 attacks × C 0.1, 1, 4 × σ 0, 0.5, 2 × seeds), Neural Cleanse columns included."""
    rng = np.random.default_rng(2)
    rows = []
    settings = [{"dp.name": "dpsgd", "dp.clip": c, "dp.noise": s} for c in (0.1, 1.0, 4.0) for s in (0.0, 0.5, 2.0)]
    settings += [{"dp.name": "none"}] if vanilla else []
    for attack, spec in NC_ATTACKS.items():
        ratios = [spec["ratio"], spec["ratio"] * 2] if more_ratios else [spec["ratio"]]
        for ratio, dp, seed in itertools.product(ratios, settings, range(seeds)):
            shift = 0.01 * (dp.get("dp.clip", 2.0) - 2.0) + rng.normal(0, 0.005)
            index = 3.0 / (1 + dp.get("dp.clip", 0.0)) + rng.normal(0, 0.2)
            row = {
                "dataset.name": "digits", "model.name": "mlp", "attack.name": attack, "attack.poison_ratio": ratio,
                **spec["extra"], "seed": seed, **dp, "status": "ok", "detector.anomaly_threshold": 2.0,
                "asr": spec["asr"] + shift, "rad": spec["rad"] + shift, "clean_acc": 0.9 - spec["rad"],
                "nc_target_anomaly_index": index, "nc_detected": bool(index > 2), "asr_after": spec["asr"] / 2,
                "clean_acc_after": 0.85 - spec["rad"], "epsilon": 1 / dp["dp.noise"] if dp.get("dp.noise") else None,
                "run_dir": f"/nc/{attack}/{ratio}/{dp}/{seed}",
            }  # fmt: skip
            rows.append(row)
    return add_defense(pd.DataFrame(rows))


def _panel_attack(ax) -> str:
    title = ax.get_title().replace("\n", " ")
    assert title.startswith("attack: "), title
    return title.removeprefix("attack: ").split(",")[0].split(":")[0]


def _assert_lines_within_their_attack(fig: Figure) -> int:
    """Every data line of a panel lies in the band of the attack its title names: no line joins two attacks."""
    checked = 0
    for ax in fig.axes:
        if not ax.axison or not ax.get_title():
            continue
        attack = _panel_attack(ax)
        metric = "asr" if ax.get_ylabel() == "attack success rate" else "rad"
        centre = NC_ATTACKS[attack][metric]
        for line in ax.lines:
            y = np.asarray(line.get_ydata(), dtype=float)
            if len(y) > 1 and line.get_linestyle() in ("-", "--"):  # a series or the vanilla line (not caps)
                assert np.all(np.abs(y - centre) <= BAND), (attack, metric, y)
                checked += 1
    return checked


def test_multi_attack_sweep_is_drawn_per_attack_never_joined() -> None:
    runs = nc_runs(vanilla=True)
    # Each attack at one ratio: no line to draw, and the skip says which ratio each ran at.
    with pytest.raises(ValueError, match=r"each attack ran at one poison ratio \(badnets 10%, blend 10%, narcis"):
        plots.rad_vs_poison_ratio(runs)
    fig = plots.asr_rad_vs_dp(runs)
    # attacks × metrics × (vs C, vs σ) × (3 lines + the vanilla reference)
    assert _assert_lines_within_their_attack(fig) == 3 * 2 * 2 * 4
    assert {_panel_attack(ax) for ax in fig.axes if ax.get_title()} == set(NC_ATTACKS)
    assert_readable(fig)
    fig = plots.rad_vs_poison_ratio(nc_runs(vanilla=True, more_ratios=True))
    # 9 DP settings: a panel per attack and σ, each with vanilla and 3 clip norms
    assert _assert_lines_within_their_attack(fig) == 3 * 3 * 4
    ticks = {_panel_attack(ax): _tick_labels(ax) for ax in fig.axes if ax.get_title()}
    assert ticks == {"badnets": ["10%", "20%"], "blend": ["10%", "20%"], "narcissus": ["1%", "2%"]}
    assert_readable(fig)
    for make in (plots.nc_anomaly_vs_dp, plots.nc_asr_before_after, plots.utility_heatmap, plots.privacy_tradeoff):
        fig = make(runs)
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles and all(t.startswith("attack: ") for t in titles), (make.__name__, titles)
        assert not any("pattern_seed" in t or "test_magnification" in t for t in titles)
        plt.close(fig)


def _legend_entries(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _dashed(fig: Figure) -> int:
    return sum(ln.get_linestyle() == "--" for ax in fig.axes for ln in ax.lines)


@pytest.mark.parametrize("make", [plots.asr_rad_vs_dp, plots.nc_anomaly_vs_dp], ids=lambda f: f.__name__)
def test_the_vanilla_line_is_promised_only_when_drawn(make) -> None:
    fig = make(nc_runs(vanilla=False))
    suptitle = fig.get_suptitle().replace("\n", " ")
    assert "no vanilla line: no run with dp=none in this sweep (add dp=dpsgd,none)" in suptitle
    assert _dashed(fig) == 0 and not any("vanilla" in e for e in _legend_entries(fig))
    assert "dashed: vanilla" not in suptitle
    plt.close(fig)
    fig = make(nc_runs(vanilla=True))
    assert _dashed(fig) > 0 and "vanilla (no DP)" in _legend_entries(fig)
    assert "no vanilla line" not in fig.get_suptitle()
    plt.close(fig)


@pytest.mark.parametrize("ratios", [(0.0, 0.1, 0.2, 0.3, 0.4), HONG_RATIOS], ids=["linear", "hong"])
def test_dodge_stays_well_inside_the_gap_between_ratios(ratios) -> None:
    runs = preset_runs("fig4a")
    fig = plots.rad_vs_poison_ratio(runs[runs["attack.poison_ratio"].isin(ratios)])
    (ax,) = fig.axes
    ticks = np.asarray(ax.get_xticks())
    gap = np.diff(ticks).min()
    for line in ax.lines:
        for x in np.asarray(line.get_xdata(), dtype=float):
            assert np.abs(ticks - x).min() <= 0.1 * gap + 1e-9  # within a fifth of the gap, centred on the ratio
    plt.close(fig)


def mixed_dataset_frame(frame: pd.DataFrame, *, as_lists: bool, other: str = "digits") -> pd.DataFrame:
    """``frame`` twice: as ``other`` (``dataset.classes`` null) and as FashionMNIST-3/4 (dataset fashion_mnist,
    classes [3, 4])."""
    classes = [3, 4] if as_lists else (3, 4)
    digits = frame.assign(**{"dataset.name": other, "dataset.classes": None})
    fmnist = frame.assign(**{"dataset.name": "fashion_mnist"})
    fmnist["dataset.classes"] = pd.Series([list(classes) if as_lists else classes] * len(fmnist), index=fmnist.index)
    fmnist["run_dir"] = fmnist["run_dir"] + "/fmnist"
    return pd.concat([digits, fmnist], ignore_index=True)


@pytest.mark.parametrize(("as_lists", "other"), [(True, "digits"), (False, "digits"), (True, "fashion_mnist")],
                         ids=["lists", "tuples", "one-name"])  # fmt: skip
@pytest.mark.parametrize("spec", plots.FIGURES, ids=lambda spec: spec.name)
def test_mixed_datasets_name_the_dataset_in_every_panel(spec: plots.FigureSpec, as_lists: bool, other: str) -> None:
    """dataset.classes holding lists (or tuples) and nulls: no warning, no error, and each panel says its dataset
    (FashionMNIST and its classes 3, 4 share the name fashion_mnist: the classes tell them apart)."""
    base = preset_runs("grid", seeds=2) if spec.source == "runs" else preset_history("grid", epochs=4, seeds=1)
    base = base[base["attack.name"] == "badnets"]
    frame = mixed_dataset_frame(base, as_lists=as_lists, other=other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Pandas4Warning (a DeprecationWarning) fails the test
        try:
            fig = spec.make(frame)
        except ValueError as err:
            assert str(err).startswith(f"{spec.name}: ") and "\n" not in str(err)
            return
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes if ax.axison and ax.get_title()]
    assert titles and all("dataset: " in t for t in titles), titles
    assert any("classes 3, 4" in t or "classes: 3, 4" in t for t in titles), titles
    assert_readable(fig)


@pytest.mark.parametrize(
    "definition, column", [("final", "rad"), ("best", "rad_best"), ("early_stop", "rad_early_stop"), ("bogus", "rad")]
)
def test_figures_plot_the_rad_the_runs_ask_for(definition: str, column: str) -> None:
    """``rad_definition`` picks the column; a mixed sweep, or one lacking that column, plots ``rad``."""
    from gsdefense.plots._common import rad_metric

    df = pd.DataFrame({"config.rad_definition": [definition] * 2, "rad": [0.1, 0.2], "rad_best": [0.0, -0.1],
                       "rad_early_stop": [0.0, 0.0]})  # fmt: skip
    assert rad_metric(df) == column
    assert rad_metric(df.drop(columns=[column]) if column != "rad" else df) == "rad"
    mixed = df.assign(**{"config.rad_definition": [definition, "final"]})
    assert rad_metric(mixed) == "rad"
