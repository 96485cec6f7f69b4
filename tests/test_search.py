"""The search loop in-process, on small real slices."""

from __future__ import annotations

import signal

import optuna
import pytest
from optuna.trial import TrialState

from cifar_search import ledger
from cifar_search.errors import CifarSearchError
from cifar_search.presets import DEFAULTS
from cifar_search.presets import get as get_preset
from cifar_search.search import make_sampler, run_search, trial_seed
from cifar_search.space import BASELINE_PARAMS, params_of

SMALL = {"train_size": 500, "val_size": 200, "max_epochs": 1, "pruner": "none"}


def test_nan_loss_fails_the_trial_with_its_reason_and_the_search_goes_on(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/nan.db"
    lines: list[str] = []
    run_search("nan", url, given=SMALL, n_trials=1, data_dir=str(data_dir), presets=[],
               log=lines.append)
    study = optuna.load_study(study_name="nan", storage=url)
    # The learning rate is outside the space on purpose: Optuna warns and uses it.
    study.enqueue_trial({**BASELINE_PARAMS, "optimizer": "sgd", "learning_rate": 1e10})
    run_search("nan", url, given={}, n_trials=2, data_dir=str(data_dir), log=lines.append)
    trials = optuna.load_study(study_name="nan", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[1].user_attrs["fail_reason"] == "non-finite loss at epoch 1"
    assert any("trial 1 fail" in line and "non-finite loss" in line for line in lines)


def test_study_config_is_frozen_and_checked(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/frozen.db"
    run_search("f", url, given=SMALL, n_trials=1, data_dir=str(data_dir), presets=[],
               log=lambda _: None)
    study = optuna.load_study(study_name="f", storage=url)
    assert ledger.frozen_config(study).to_dict() == {"seed": 0, "layers": "variants",
                                                    "heartbeat": 10, "precise_bn": True,
                                                    **SMALL}
    assert set(study.user_attrs["versions"]) >= {"optuna", "keras", "tensorflow"}
    with pytest.raises(CifarSearchError, match=r"train_size=600 \(study has 500\)"):
        run_search("f", url, given={"train_size": 600}, n_trials=2, data_dir=str(data_dir))
    assert len(study.get_trials()) == 1, "a refused worker writes nothing"


def test_presets_are_enqueued_once_and_run_first(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/preset.db"
    lines: list[str] = []
    for _ in range(2):  # The second run must not enqueue the preset again.
        run_search("p", url, given=SMALL, n_trials=2, data_dir=str(data_dir),
                   presets=["bn-aug-adamw"], log=lines.append)
    assert lines[0].startswith("study 'p': 0/2 trials finished")
    trials = optuna.load_study(study_name="p", storage=url).get_trials()
    assert len(trials) == 2
    assert trials[0].user_attrs["preset"] == "bn-aug-adamw"
    assert trials[0].user_attrs["train_config"]["optimizer"] == "adamw"
    assert trials[1].params == BASELINE_PARAMS


def test_a_new_study_starts_from_the_default_preset_of_its_layers(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/default.db"
    study = run_search("d", url, given={**SMALL, "layers": "prescribed"}, n_trials=1,
                       data_dir=str(data_dir), log=lambda _: None)
    first, baseline = study.get_trials()
    assert first.user_attrs["preset"] == DEFAULTS["prescribed"]
    # The prescribed layers sample no batch norm or dropout flags: the rest is the preset's.
    assert first.params.items() <= params_of(get_preset(DEFAULTS["prescribed"]).config).items()
    assert first.user_attrs["family"] == "aug"
    assert first.state == TrialState.COMPLETE
    # The total is reached: the baseline stays queued for a larger run, not run as a surplus.
    assert baseline.state == TrialState.WAITING
    assert baseline.user_attrs["reference"] == "seed baseline"


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(CifarSearchError, match="no preset named 'x'"):
        run_search("p", f"sqlite:///{tmp_path}/x.db", given={}, n_trials=1, presets=["x"])


def test_bad_random_trials_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CifarSearchError, match="random_trials must be at least 0"):
        run_search("r", f"sqlite:///{tmp_path}/r.db", given={}, n_trials=1, random_trials=-1)
    assert not list(tmp_path.iterdir())


def test_the_sampler_models_the_study_after_its_random_trials():
    """Its proposals are random draws while the study holds fewer than ``random_trials``
    finished trials (pruned ones count), TPE's after."""
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def proposal(sampler: optuna.samplers.BaseSampler) -> float:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for x, state in ((0.1, TrialState.COMPLETE), (0.9, TrialState.COMPLETE),
                         (0.5, TrialState.PRUNED)):
            study.add_trial(optuna.trial.create_trial(
                params={"x": x}, distributions=space, state=state,
                value=x if state == TrialState.COMPLETE else None,
                intermediate_values={0: x}))
        return study.ask(space).params["x"]

    random = proposal(optuna.samplers.RandomSampler(seed=1))
    assert proposal(make_sampler(1, random_trials=4)) == random
    assert proposal(make_sampler(1, random_trials=3)) != random
    assert proposal(make_sampler(1)) != random  # 3 by default: TPE's from the 4th trial.


def test_trial_seeds_differ_by_trial_and_by_base():
    assert trial_seed(7, 3) == trial_seed(7, 3)
    assert len({trial_seed(7, n) for n in range(50)}) == 50
    assert trial_seed(0, 1) != trial_seed(1, 0)


def test_the_same_command_proposes_the_same_trials_by_default(tmp_path, data_dir):
    """Two users' quickstarts picked different trial-2 configurations: the sampler was
    unseeded unless --sampler-seed was given."""
    proposed = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path}/{name}.db"
        run_search(name, url, given={**SMALL, "train_size": 100}, n_trials=2,
                   data_dir=str(data_dir), presets=[], enqueue_baseline=False,
                   log=lambda _: None)
        proposed.append([t.params for t in optuna.load_study(study_name=name,
                                                             storage=url).get_trials()])
    assert proposed[0] == proposed[1]
    assert proposed[0][0] != proposed[0][1]


def test_a_resumed_seeded_worker_does_not_repeat_its_first_trials(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/resume.db"
    for total in (2, 4):  # The same command twice, as after an interruption.
        run_search("r", url, given=SMALL, n_trials=total, data_dir=str(data_dir), presets=[],
                   enqueue_baseline=False, log=lambda _: None)
    trials = optuna.load_study(study_name="r", storage=url).get_trials()
    assert len(trials) == 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


def test_a_signal_lost_in_a_finalizer_stops_training_at_the_next_batch(tmp_path, data_dir):
    """Python drops a KeyboardInterrupt raised in a finalizer; the worker trained on to the
    end of the trial (past a CI test's 30 s) before acting on it."""
    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)

    def log(line: str) -> None:
        lines.append(line)
        if "epoch 1/" in line:
            Finalized()

    url = f"sqlite:///{tmp_path}/lost.db"
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_search("lost", url, given={**SMALL, "max_epochs": 3}, n_trials=1,
                   data_dir=str(data_dir), presets=[], log=log)
    first, retry = optuna.load_study(study_name="lost", storage=url).get_trials()
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.WAITING)
    assert len(first.user_attrs["history"]["val_accuracy"]) == 1
    assert "trial 0 interrupted; trial 0 re-queued as trial 1" in lines[-1]
