import json

import pytest

from igulora import IguLoraConfig


def test_json_round_trip(tmp_path):
    cfg = IguLoraConfig(target_modules=["query", "value"], init_r=6, target_r=3, estimator="trapezoid",
                        total_step=100, tinit=0.1, tfinal=5, deltaT=0.05)
    path = tmp_path / "cfg.json"
    cfg.save(path)
    assert IguLoraConfig.load(path) == cfg
    assert json.loads(path.read_text())["estimator"] == "trapezoid"


def test_fractions_resolve_to_steps():
    cfg = IguLoraConfig(total_step=200, tinit=0.1, tfinal=0.25, deltaT=0.05)
    assert cfg.schedule_steps() == (200, 20, 50, 10)
    assert IguLoraConfig(tinit=3, tfinal=4, deltaT=2).schedule_steps(50) == (50, 3, 4, 2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"init_r": 4, "target_r": 6}, "target_r"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": 0.0}, "beta2"),
        ({"beta1": -0.5}, "beta1"),
        ({"total_step": 10, "tinit": 5, "tfinal": 5}, "tinit + tfinal"),
        ({"ig_steps": 0, "estimator": "gradient"}, "ig_steps"),
        ({"ig_steps": 1, "estimator": "stochastic"}, "ig_steps"),
        ({"ig_steps": 1, "estimator": "trapezoid"}, "ig_steps"),
        ({"estimator": "bogus"}, "estimator"),
        ({"score": "ratio"}, "score"),
        ({"budget_unit": "flops"}, "budget_unit"),
        ({"ig_form": "beta"}, "ig_form"),
        ({"tinit": -1}, "tinit"),
        ({"deltaT": 0}, "deltaT"),
        ({"tfinal": 1.5}, "tfinal"),
        ({"total_step": 0}, "total_step"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"target_budget": -3}, "target_budget"),
        ({"score_every": 0}, "score_every"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError) as err:
        IguLoraConfig(**kwargs)
    assert field in str(err.value)


def test_bad_value_message_shows_value():
    with pytest.raises(ValueError, match=r"'bogus'.*stochastic, trapezoid"):
        IguLoraConfig(estimator="bogus")
    with pytest.raises(ValueError, match=r"target_r=6.*init_r=4"):
        IguLoraConfig(init_r=4, target_r=6)


def test_gradient_estimator_allows_one_step():
    assert IguLoraConfig(estimator="gradient", ig_steps=1).ig_steps == 1


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match=r"bogus_field"):
        IguLoraConfig.from_dict({"bogus_field": 1})


def test_total_step_missing_is_explained():
    with pytest.raises(ValueError, match=r"total_step is not set"):
        IguLoraConfig().schedule_steps()


def test_score_every_auto_resolves_by_estimator():
    """None (auto): every 8th step for the estimators with probe passes, every step for those without."""
    assert IguLoraConfig().score_every is None and IguLoraConfig().score_interval == 8
    for est in ("stochastic", "trapezoid", "paper-eq6"):
        assert IguLoraConfig(estimator=est).score_interval == 8
    for est in ("gradient", "coupled"):
        assert IguLoraConfig(estimator=est).score_interval == 1
    assert IguLoraConfig(score_every=3, estimator="gradient").score_interval == 3
    cfg = IguLoraConfig(score_every=None)
    assert IguLoraConfig.from_dict(cfg.to_dict()) == cfg
