"""pneumo-train's settings, checked in one place: every checked key refused in one line naming
it, the rules between keys, and the presets passing."""

from __future__ import annotations

import pytest

from pneumo.errors import PneumoError
from pneumo.training.settings import RULES, check_train_config, check_value
from tests.helpers import FAST, make_cfg

# (override, the key the one line names, what it shows as the value)
BAD_VALUES = [
    ("seed=abc", "seed", "abc"),
    ("monitor.mode=up", "monitor.mode", "up"),
    ("data.batch_size=0", "data.batch_size", "0"),
    ("data.image_size=27", "data.image_size", "27"),
    ("data.image_size=big", "data.image_size", "big"),
    ("data.num_workers=-1", "data.num_workers", "-1"),
    ("data.val_fraction=1.0", "data.val_fraction", "1.0"),
    ("data.val_holdout=latest", "data.val_holdout", "'latest'"),
    ("data.min_val_images=-1", "data.min_val_images", "-1"),
    ("data.balance=oversample", "data.balance", "'oversample'"),
    ("data.on_bad_image=ignore", "data.on_bad_image", "'ignore'"),
    ("data.cache=ram", "data.cache", "'ram'"),
    ("data.seed=1.5", "data.seed", "1.5"),
    ("data.classes=NORMAL", "data.classes", "'NORMAL'"),
    ("trainer.precision=8", "trainer.precision", "8"),
    ("trainer.max_epochs=0", "trainer.max_epochs", "0"),
    ("trainer.min_epochs=-1", "trainer.min_epochs", "-1"),
    ("trainer.devices=0", "trainer.devices", "0"),
    ("trainer.num_nodes=0", "trainer.num_nodes", "0"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", "0"),
    ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch", "0"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches", "1.5"),
    ("trainer.limit_val_batches=0", "trainer.limit_val_batches", "0"),
    ("trainer.max_time=abc", "trainer.max_time", "abc"),
    ("trainer.accelerator=quantum", "trainer.accelerator", "quantum"),
    ("model.weights=[]", "model.weights", "[]"),
    ("model.optimizer.lr=0", "model.optimizer.lr", "0"),
    ("model.optimizer.weight_decay=-1", "model.optimizer.weight_decay", "-1"),
    ("model.optimizer.fused=yes", "model.optimizer.fused", "yes"),
    ("model.scheduler.factor=1.5", "model.scheduler.factor", "1.5"),
    ("model.scheduler.patience=-1", "model.scheduler.patience", "-1"),
    ("model.label_smoothing=1.0", "model.label_smoothing", "1.0"),
    ("model.label_smoothing=null", "model.label_smoothing", "None"),
    ("model.mixup_alpha=-1", "model.mixup_alpha", "-1"),
    ("model.threshold_method=yuden", "model.threshold_method", "'yuden'"),
    ("model.target_sensitivity=0", "model.target_sensitivity", "0"),
    ("model.plateau_tolerance=1.0", "model.plateau_tolerance", "1.0"),
    ("model.compile=fastest", "model.compile", "'fastest'"),
]
# keys only a chosen schedule has: (group override, bad value)
SCHEDULE_VALUES = [
    (["model/scheduler=cosine", "model.scheduler.eta_min=-1"], "model.scheduler.eta_min", "-1"),
    (["model/scheduler=cosine", "model.scheduler.T_max=0"], "model.scheduler.T_max", "0"),
]


def _refused(tmp_path, overrides: list[str]) -> str:
    with pytest.raises(PneumoError) as refused:
        check_train_config(make_cfg(tmp_path / "run", [*FAST, *overrides]))
    return str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "key", "shown"),
    [([o], k, s) for o, k, s in BAD_VALUES] + SCHEDULE_VALUES,
    ids=[o for o, _, _ in BAD_VALUES] + [o[-1] for o, _, _ in SCHEDULE_VALUES],
)
def test_a_bad_value_is_refused_in_one_line_naming_its_key_and_the_fix(tmp_path, overrides, key, shown):
    message = _refused(tmp_path, overrides)
    assert message.startswith(f"{key}={shown} is not valid: use "), message
    assert "\n" not in message and len(message) > len(f"{key}={shown} is not valid: use ") + 3


def test_every_checked_key_has_a_bad_value_above():
    tried = {key for _, key, _ in BAD_VALUES} | {key for _, key, _ in SCHEDULE_VALUES} | {"search.n_trials"}
    assert {rule.key for rule in RULES} <= tried


def test_a_search_of_no_trial_is_refused(tmp_path):
    said = r"^search.n_trials=0 is not valid: use a number of trials, 1 or more"
    with pytest.raises(PneumoError, match=said):
        check_train_config(make_cfg(tmp_path / "run", [*FAST, "search.n_trials=0"], config_name="search"))


def test_the_classes_must_hold_the_positive_class(tmp_path):
    for overrides in (["data.positive_class=COVID"], ["data.classes=[NORMAL,NORMAL]"]):
        message = _refused(tmp_path, overrides)
        assert message.startswith("data.classes=") and "data.positive_class=" in message
        assert "one of which is the positive class" in message


def test_min_epochs_beyond_max_epochs_is_refused_naming_both(tmp_path):
    message = _refused(tmp_path, ["trainer.min_epochs=5", "trainer.max_epochs=3"])
    assert message == (
        "trainer.min_epochs=5 is not valid with trainer.max_epochs=3: use at most 3, or raise "
        "trainer.max_epochs"
    )
    # without an epoch limit there is nothing to exceed
    check_train_config(make_cfg(tmp_path / "run", [*FAST, "trainer.min_epochs=5", "trainer.max_epochs=-1"]))


def test_a_cosine_schedule_needs_an_end(tmp_path):
    # T_max follows trainer.max_epochs: with no epoch limit the cosine has no length
    message = _refused(tmp_path, ["model/scheduler=cosine", "trainer.max_epochs=-1"])
    assert message.startswith("model.scheduler.T_max=-1 is not valid: use 1 or more epochs")
    assert "trainer.max_epochs" in message
    overrides = [*FAST, "model/scheduler=cosine", "trainer.max_epochs=-1", "model.scheduler.T_max=4"]
    check_train_config(make_cfg(tmp_path / "run", overrides))


def test_a_schedule_is_checked_by_its_own_keys_only(tmp_path):
    # plateau's factor and patience mean nothing to a cosine schedule, which has none
    check_train_config(make_cfg(tmp_path / "run", [*FAST, "model/scheduler=cosine"]))
    check_train_config(make_cfg(tmp_path / "run", [*FAST, "model/scheduler=none"]))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=quickstart"],
        ["experiment=kermany_cpu"],
        ["debug=fast_dev_run"],
        ["ablation=mixup"],
        ["trainer.max_epochs=null", "trainer.min_epochs=null", "trainer.max_time=00:04:00:00"],
        ["model.compile=true", "model.threshold_method=plateau", "data.balance=sampler"],
    ],
    ids=repr,
)
def test_the_shipped_settings_pass(tmp_path, overrides):
    check_train_config(make_cfg(tmp_path / "run", [*FAST, *overrides]))


def test_a_flag_standing_for_a_key_is_checked_by_that_key_s_rule():
    check_value("model.compile", "inductor")
    with pytest.raises(PneumoError, match=r"^model.compile='fastest' is not valid: use false, true"):
        check_value("model.compile", "fastest")
