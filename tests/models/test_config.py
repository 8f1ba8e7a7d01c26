"""Model registry, presets and typed key=value overrides."""

import dataclasses
from typing import Literal

import pytest

from visatt_models import registry
from visatt_models.cnn import CNN, CNNConfig
from visatt_models.config import ConfigError, config_from_dict, config_to_dict, convert, parse_overrides
from visatt_models.registry import get_model_spec, make_config


@dataclasses.dataclass(frozen=True)
class Example:
    n: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "a"
    mode: Literal["x", "y"] = "x"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, float] = (1, 1.0)
    maybe: int | None = None

    def __post_init__(self):
        if self.n < 0:
            raise ValueError("n must be non-negative")


def test_overrides_convert_every_field_type():
    c = parse_overrides(
        Example,
        ["n=3", "rate=1e-3", "flag=yes", "name=b=c", "mode=y", "sizes=4,5,6", "pair=(2, 0.25)", "maybe=7"],
    )
    assert c == Example(n=3, rate=1e-3, flag=True, name="b=c", mode="y", sizes=(4, 5, 6), pair=(2, 0.25), maybe=7)
    assert isinstance(c.rate, float) and isinstance(c.sizes, tuple)
    assert parse_overrides(Example, ["maybe=none", "sizes=8,", "flag=0"]) == Example(maybe=None, sizes=(8,), flag=False)


@pytest.mark.parametrize(
    "item, message",
    [
        ("bogus=1", "unknown key 'bogus'"),
        ("n=1.5", "expected an integer"),
        ("rate=fast", "expected a number"),
        ("rate=nan", "expected a finite number"),
        ("pair=1,-inf", "expected a finite number"),
        ("flag=maybe", "expected a boolean"),
        ("mode=z", "expected one of x, y"),
        ("sizes=1,a", "expected an integer"),
        ("pair=1,2,3", "expected 2 comma-separated values"),
        ("n", "not of the form key=value"),
        ("n=-1", "n must be non-negative"),
    ],
)
def test_bad_overrides_are_clear_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(Example, [item])


def test_repeated_key_is_an_error():
    with pytest.raises(ConfigError, match="set twice"):
        parse_overrides(Example, ["n=1", "n=2"])


def test_convert_literal_keeps_the_literal_type():
    assert convert("2", Literal[1, 2]) == 2 and isinstance(convert("2", Literal[1, 2]), int)


def test_registry_presets_and_fields():
    spec = get_model_spec("cnn")
    assert spec.model_cls is CNN and spec.config_cls is CNNConfig and set(spec.presets) == set(registry.MODELS["cnn"].presets)
    config = make_config(spec, preset="modern", overrides=["dropout=0.1"], blocks=2)
    assert config.arch == "modern" and config.widths == (32, 64, 128, 256)
    assert config.dropout == 0.1 and config.blocks == 2
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*modern"):
        make_config(spec, preset="nope")
    with pytest.raises(ConfigError, match="unknown model 'vit'"):
        get_model_spec("vit")


def test_invalid_config_values_are_config_errors():
    spec = get_model_spec("cnn")
    with pytest.raises(ConfigError, match="exactly 2 conv widths"):
        make_config(spec, overrides=["widths=8,16,32"])
    with pytest.raises(ConfigError, match="dropout"):
        make_config(spec, overrides=["dropout=1.5"])


RATES = [(name, f.name) for name in registry.MODEL_NAMES
         for f in dataclasses.fields(get_model_spec(name).config_cls) if "dropout" in f.name]


def test_the_dropout_rates_are_found():
    assert {name for name, _ in RATES} == {"cnn", "ram", "stn"} and ("cnn", "dense_dropout") in RATES


@pytest.mark.parametrize("name, rate", RATES)
@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_dropout_rates_lie_in_zero_to_one(name, rate, value):
    spec = get_model_spec(name)
    with pytest.raises(ConfigError, match=rf"{rate} must be in \[0, 1\), got {value}"):
        make_config(spec, overrides=[f"{rate}={value}"])
    assert getattr(make_config(spec, overrides=[f"{rate}=0.0"]), rate) == 0.0


def test_dict_round_trip_restores_tuples():
    config = CNNConfig(arch="modern", widths=(8, 16, 32))
    values = config_to_dict(config)
    values["widths"] = list(values["widths"])  # as JSON gives it back
    assert config_from_dict(CNNConfig, values) == config
    with pytest.raises(ConfigError, match="no field"):
        config_from_dict(CNNConfig, {**values, "extra": 1})


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_every_registered_model_and_preset_resolves(name):
    spec = get_model_spec(name)
    assert dataclasses.is_dataclass(spec.config_cls) and spec.presets
    assert "num_classes" not in {f.name for f in dataclasses.fields(spec.config_cls)}  # the task's, not the model's
    for preset, entry in spec.presets.items():
        config = make_config(spec, preset=preset)
        assert isinstance(config, spec.config_cls) and entry.description
        assert all(getattr(config, k) == v for k, v in entry.fields.items()), preset


def test_help_and_docs_are_generated_from_the_registry():
    """docs/models.md holds the registry's table as generated, and --help lists every preset."""
    from pathlib import Path

    from click.testing import CliRunner

    from visatt_models.cli import train_main

    docs = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    assert registry.markdown_table() in docs, "docs/models.md is stale: python -m visatt_models.registry --write docs/models.md"
    help_text = "".join(CliRunner().invoke(train_main, ["--help"]).output.split())  # wrapped anywhere
    for name, entry in registry.MODELS.items():
        assert f"{name}:{','.join(entry.presets)}" in help_text


@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay", "warmup_epochs", "clipnorm", "step_factor", "rotate"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_train_config_refuses_numbers_that_are_not_finite(field, value):
    from visatt_models.config import TrainConfig

    with pytest.raises(ValueError, match=f"^{field} must be a finite number, got {value!r}$"):
        TrainConfig(**{field: value})


def test_train_config_refuses_a_momentum_keras_refuses():
    from visatt_models.config import TrainConfig

    with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\], got 1.5$"):
        TrainConfig(momentum=1.5, optimizer="sgd")
    assert TrainConfig(momentum=1.0, optimizer="sgd").momentum == 1.0
    assert TrainConfig(momentum=2.0).momentum == 2.0  # adam ignores it (a run recorded with one still loads)
