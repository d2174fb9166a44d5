"""The search report: the heatmap over the searched dimensions (log axes where searched on a log scale), and ties of
the objective broken by the validation loss, then by fewer trainable parameters."""
from __future__ import annotations

from helpers import title_fits


def _study_with_trials(trials: list[tuple[dict, float, float, int]]):
    """An in-memory study of complete trials: (searched params, accuracy, validation loss, trainable params)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for params, accuracy, loss, trainable in trials:
        config = {"lora_r": 8, "lora_alpha": 8.0, "lr": 5e-4, "method": "lora", **params}
        metrics = {"validation_accuracy": accuracy, "validation_loss": loss, "trainable_params": trainable}
        study.add_trial(optuna.trial.create_trial(value=accuracy, user_attrs={
            "params": params, "config": config, "metrics": metrics, "objective_name": "validation_accuracy"}))
    return study


def test_search_heatmap_shows_the_searched_dimensions_with_log_axes(tmp_path, captured_figures):
    from lorakit.experiments.search import Range, SearchSettings
    from lorakit.experiments.search_report import write_reports

    lrs = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    trials = [({"lr": lr, "lora_r": r}, 0.5 + 0.05 * i + 0.001 * r, 0.7 - 0.01 * i, 1000 * r)
              for i, lr in enumerate(lrs) for r in (4, 8)]
    settings = SearchSettings(base={}, space={"lr": Range(1e-5, 3e-3, log=True), "lora_r": (4, 8)},
                              output=tmp_path, sampler="random", n_trials=len(trials))
    paths = write_reports(_study_with_trials(trials), settings)
    assert paths["heatmap"].is_file()
    fig = captured_figures[0]  # the heatmap is drawn first
    ax = fig.axes[0]
    # lr moves the accuracy most: the vertical axis; lora_r beside it; lora_alpha (not searched) nowhere
    assert ax.get_ylabel() == "lr (log scale)" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "lora_r" and [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]
    assert title_fits(fig, ax)


def test_ties_go_to_the_lower_loss_then_fewer_parameters(tmp_path):
    from lorakit.experiments.search import SearchSettings
    from lorakit.experiments.search_report import TIE_BREAK, best_trial, write_reports

    # four trials at the majority class's accuracy; trial 1's loss is the lowest; trial 2 ties trial 1 on the loss
    # with more parameters
    study = _study_with_trials([({"lora_r": 4}, 0.57, 2.18, 400), ({"lora_r": 8}, 0.57, 0.685, 800),
                                ({"lora_r": 16}, 0.57, 0.685, 1600), ({"lora_r": 2}, 0.57, 0.9, 200)])
    assert best_trial(study).number == 1
    settings = SearchSettings(base={}, space={"lora_r": (2, 4, 8, 16)}, output=tmp_path)
    write_reports(study, settings)
    assert "best trial (1)" in (tmp_path / "best.yaml").read_text()  # what `lorakit compare` takes as lora-best
    summary = (tmp_path / "summary.md").read_text()
    assert "**Best: trial 1," in summary and TIE_BREAK in summary
    order = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert order[1:] == ["1", "2", "3", "0"]  # the table in the same order
