"""`training.trainer_args` and the HF aliases: names checked against the installed TrainingArguments before
anything loads, symnoise's own fields keep priority, and the values reach the built TrainingArguments."""

import dataclasses

import pytest
import transformers
import yaml

from symnoise.train import ConfigError, load_config, train
from symnoise.train.config import validate_config
from symnoise.train.recipe import training_arguments
from symnoise.train.trainer_args import FIXED, OWNED, training_argument_names

# Part of the floor subset: run against the lowest declared versions (tools/test_floors.sh).
pytestmark = pytest.mark.floor


def config_with(tmp_path, **training):
    data = {
        "model": {"name": "no/such-model-anywhere"},
        "data": {"path": "d.json"},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "per_device_batch_size": 2,
            "effective_batch_size": 4,
            "device": "cpu",
            **training,
        },
    }
    return validate_config(data)


def test_every_owned_or_fixed_name_is_a_real_field():
    """The lists track the installed transformers: a renamed field would make them silently stale."""
    names = training_argument_names()
    assert set(OWNED) <= names and set(FIXED) <= names
    assert names == {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init}


def test_pass_through_values_reach_the_built_training_arguments(tmp_path):
    config = config_with(
        tmp_path,
        run_name="my-run",
        trainer_args={
            "optim": "adafactor",
            "adam_beta1": 0.8,
            "adam_beta2": 0.95,
            "label_smoothing_factor": 0.1,
            "lr_scheduler_kwargs": {"num_cycles": 2},
            "per_device_eval_batch_size": 16,
            "logging_first_step": True,
        },
    )
    args = training_arguments(config, tmp_path / "out", "fp32", has_eval=False)
    assert isinstance(args, transformers.TrainingArguments)
    assert args.optim == "adafactor" and (args.adam_beta1, args.adam_beta2) == (0.8, 0.95)
    assert args.label_smoothing_factor == 0.1 and args.lr_scheduler_kwargs == {"num_cycles": 2}
    assert args.per_device_eval_batch_size == 16 and args.logging_first_step is True
    assert args.run_name == "my-run"
    # symnoise's own fields are untouched by the pass-through
    assert args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 2
    assert args.remove_unused_columns is False and args.label_names == ["labels"]
    default = training_arguments(config_with(tmp_path), tmp_path / "out", "fp32", has_eval=False)
    assert default.optim == "adamw_torch" and default.adam_beta2 == 0.999 and default.run_name == "out"


@pytest.mark.parametrize(
    "trainer_args,message",
    [
        ({"optm": "sgd"}, "optm is not a field of transformers.TrainingArguments; did you mean optim?"),
        ({"torch_compille": True}, "did you mean torch_compile?"),
        (
            {"num_train_epochs": 2},
            "num_train_epochs is set by symnoise from training.epochs; set that instead",
        ),
        ({"learning_rate": 1e-4}, "from training.learning_rate"),
        ({"neftune_noise_alpha": 5}, "from the noise section"),
        ({"push_to_hub": True}, "from training.push_to_hub"),
        ({"remove_unused_columns": True}, "remove_unused_columns cannot be changed"),
        ({"hub_token": "hf_x"}, "a token does not belong in a config file"),
    ],
)
def test_bad_names_are_refused_with_a_hint(tmp_path, trainer_args, message):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "m"},
                "data": {"path": "d.json"},
                "training": {"output_dir": "o", "trainer_args": trainer_args},
            }
        )
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (
        message in str(error.value) and str(path) in str(error.value) and "trainer_args" in str(error.value)
    )


def test_hf_names_are_aliases_of_symnoise_fields():
    config = load_config(
        None,
        [
            "model.name=m",
            "data.path=d.json",
            "training.output_dir=o",
            "training.num_train_epochs=2",
            "training.lr_scheduler_type=linear",
            "training.per_device_train_batch_size=8",
        ],
    )
    assert (config.training.epochs, config.training.lr_scheduler, config.training.per_device_batch_size) == (
        2.0,
        "linear",
        8,
    )
    assert "num_train_epochs" not in config.to_dict()["training"]
    with pytest.raises(
        ConfigError, match="num_train_epochs and epochs are the same setting; give only epochs"
    ):
        load_config(
            None,
            [
                "model.name=m",
                "data.path=d.json",
                "training.output_dir=o",
                "training.num_train_epochs=2",
                "training.epochs=3",
            ],
        )


def test_a_value_transformers_refuses_fails_before_the_model_loads(tmp_path, alpaca_file):
    """load_best_model_at_end needs evaluation; TrainingArguments refuses it, and the model (which does not
    exist) is never looked up."""
    config = validate_config(
        {
            "model": {"name": "no/such-model-anywhere"},
            "data": {"path": str(alpaca_file)},
            "training": {
                "output_dir": str(tmp_path / "out"),
                "device": "cpu",
                "per_device_batch_size": 4,
                "effective_batch_size": 8,
                "trainer_args": {"load_best_model_at_end": True},
            },
        }
    )
    with pytest.raises(ConfigError, match="training.trainer_args: transformers.TrainingArguments refused"):
        train(config)  # an OSError (model not found) here would mean the model was looked up first
