"""Property tests of `symnoise train`'s config: every invalid value of every field is rejected with a
`ConfigError` that names the field and what it accepts, and nothing is loaded before that."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symnoise.train import ConfigError, load_config
from symnoise.train.config import ATTENTION_IMPLEMENTATIONS, TrainConfig, is_hub_kernel, validate_config
from symnoise.train.trainer_args import FIXED, OWNED, training_argument_names

TRIED: dict[str, int] = {}

# YAML/pydantic spellings a lax boolean accepts; anything else is not a boolean.
BOOL_WORDS = {"0", "1", "true", "false", "t", "f", "y", "n", "yes", "no", "on", "off"}

not_text = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.none(),
)
non_numeric_text = st.text(max_size=8).filter(lambda s: not _is_number(s))
fractional = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x))
non_finite = st.sampled_from([math.inf, -math.inf, math.nan])


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def choice(options):
    """Values outside a fixed set of strings, and values that are not strings at all."""
    return st.one_of(
        st.text(max_size=12).filter(lambda s: s not in options),
        st.integers(),
        st.floats(allow_nan=False),
        st.lists(st.sampled_from(options), max_size=2),
    )


def boolean():
    return st.one_of(
        st.text(max_size=6).filter(lambda s: s.strip().lower() not in BOOL_WORDS),
        st.integers().filter(lambda i: i not in (0, 1)),
        st.floats(allow_nan=False).filter(lambda x: x not in (0.0, 1.0)),
        st.lists(st.booleans(), min_size=1, max_size=2),
    )


def integer(minimum=None, strict=False):
    bad = [fractional, non_numeric_text, non_finite]
    if minimum is not None:
        bad.append(st.integers(max_value=minimum - 1))
    if strict:  # NoiseConfig: no coercion from text or floats
        bad.append(st.text(max_size=6))
    return st.one_of(bad)


def number(low=None, high=None, low_valid=False, high_valid=False):
    """Values outside (low, high), the bounds themselves included unless marked valid."""
    bad = [non_numeric_text, non_finite, st.lists(st.floats(), min_size=1, max_size=2)]
    if low is not None:
        bad.append(st.floats(max_value=low, exclude_max=low_valid, allow_nan=False))
    if high is not None:
        bad.append(st.floats(min_value=high, exclude_min=high_valid, allow_nan=False))
    return st.one_of(bad)


def text():
    return st.one_of(not_text.filter(lambda v: v is not None), st.just(""))


LR = ("cosine", "linear", "constant", "constant_with_warmup")
FORMATS = (
    "auto",
    "alpaca",
    "sharegpt",
    "evol-instruct",
    "openplatypus",
    "dolly",
    "messages",
    "prompt-completion",
)
# field path -> (strategy of invalid values, words the error must contain besides the field's name)
FIELDS = {
    "model.name": (text(), ["string|character"]),
    "model.revision": (text().filter(lambda v: v is not None), ["string|character"]),
    "model.dtype": (
        choice(("auto", "float32", "bfloat16", "float16")),
        ["auto", "float32", "bfloat16", "float16"],
    ),
    "model.attn_implementation": (  # any other text that is no hub kernel name (ORG/REPO[@REV][:FUNCTION])
        choice(ATTENTION_IMPLEMENTATIONS).filter(lambda v: not (isinstance(v, str) and is_hub_kernel(v))),
        [
            "string|character|use one of eager, sdpa, flex_attention, flash_attention_2, flash_attention_3, flash_attention_4, "
            "or a hub kernel ORG/REPO[@REVISION][:FUNCTION]"
        ],
    ),
    "model.trust_remote_code": (boolean(), ["true or false"]),
    "model.use_kernels": (boolean(), ["true or false"]),
    "model.license": (text().filter(lambda v: v is not None), ["string|character"]),
    "data.path": (text(), ["string|character"]),
    "data.format": (choice(FORMATS), list(FORMATS)),
    "data.template": (choice(("alpaca", "vicuna", "chat", "plain")), ["alpaca", "vicuna", "chat", "plain"]),
    "data.turns": (choice(("all", "first")), ["all", "first"]),
    "data.datasets": (
        st.one_of(
            st.text(max_size=5), st.integers(), st.just([]), st.lists(st.integers(), min_size=1, max_size=2)
        ),
        ["list|item|dictionary|DatasetEntry"],
    ),
    "data.cache": (boolean(), ["true or false"]),
    "data.eval_path": (text(), ["string|character"]),
    "data.split": (text(), ["string|character"]),
    "data.max_length": (integer(minimum=8), ["integer|finite|8"]),
    "data.on_bad_row": (choice(("error", "skip")), ["error", "skip"]),
    "data.limit": (integer(minimum=1), ["integer|finite|1"]),
    "data.packing": (choice(("none", "rows", "padding_free")), ["none", "rows", "padding_free"]),
    "data.group_by_length": (boolean(), ["true or false"]),
    "lora.enabled": (boolean(), ["true or false"]),
    "lora.r": (integer(minimum=1), ["integer|finite|1"]),
    "lora.alpha": (number(low=0), ["number|0"]),
    "lora.dropout": (number(low=0, high=1, low_valid=True), ["number|0|1"]),
    "lora.target_modules": (
        st.one_of(
            st.text(max_size=8).filter(lambda s: s != "all-linear"),
            st.lists(st.one_of(st.integers(), st.just("")), min_size=1, max_size=2),
        ),
        ["all-linear"],
    ),
    "lora.quantize_4bit": (boolean(), ["true or false"]),
    "training.output_dir": (text(), ["string|character"]),
    "training.epochs": (number(low=0), ["number|0"]),
    "training.max_steps": (
        st.one_of(integer(), st.integers(max_value=0).filter(lambda i: i != -1)),
        ["integer|finite|-1"],
    ),
    "training.learning_rate": (number(low=0), ["number|0"]),
    "training.weight_decay": (number(low=0, low_valid=True), ["number|0"]),
    "training.lr_scheduler": (choice(LR), list(LR)),
    "training.warmup_ratio": (number(low=0, high=1, low_valid=True), ["number|0|1"]),
    "training.per_device_batch_size": (integer(minimum=1), ["integer|finite|1"]),
    "training.effective_batch_size": (integer(minimum=1), ["integer|finite|1"]),
    "training.max_grad_norm": (number(low=0), ["number|0"]),
    "training.gradient_checkpointing": (boolean(), ["true or false"]),
    "training.trained_logits_only": (boolean(), ["true or false"]),
    "training.precision": (choice(("auto", "bf16", "fp16", "fp32")), ["auto", "bf16", "fp16", "fp32"]),
    "training.pure_bf16": (boolean(), ["true or false"]),
    "training.seed": (integer(), ["integer|finite"]),
    "training.logging_steps": (integer(minimum=1), ["integer|finite|1"]),
    "training.save_steps": (integer(minimum=1), ["integer|finite|1"]),
    "training.save_total_limit": (integer(minimum=1), ["integer|finite|1"]),
    "training.save_model": (boolean(), ["true or false"]),
    "training.eval_steps": (integer(minimum=1), ["integer|finite|1"]),
    "training.report_to": (
        st.lists(choice(("tensorboard", "wandb")), min_size=1, max_size=2),
        ["tensorboard", "wandb"],
    ),
    "training.dataloader_num_workers": (integer(minimum=0), ["integer|finite|0"]),
    "training.device": (choice(("auto", "cpu")), ["auto", "cpu"]),
    "training.on_nonfinite": (choice(("stop", "skip")), ["stop", "skip"]),
    "training.run_name": (text().filter(lambda v: v is not None), ["string|character"]),
    "training.wandb": (
        st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
        ["dictionary"],
    ),
    "training.push_to_hub": (boolean(), ["true or false"]),
    "training.hub_model_id": (text().filter(lambda v: v is not None), ["string|character"]),
    "training.hub_private": (boolean(), ["true or false"]),
    "training.trainer_args": (
        st.one_of(
            st.integers(),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(
                st.text(min_size=1, max_size=8).filter(
                    lambda k: k not in training_argument_names() or k in OWNED or k in FIXED
                ),
                st.integers(),
                min_size=1,
                max_size=2,
            ),
        ),
        ["dictionary|TrainingArguments|set by symnoise|cannot be changed"],
    ),
    "noise.method": (
        choice(("none", "uniform", "gaussian", "bernoulli", "symnoise", "neftune", "neft")),
        ["none", "uniform", "gaussian", "bernoulli", "symnoise"],
    ),
    "noise.alpha": (number(low=0, low_valid=True), ["number"]),
    "noise.alpha_floor": (number(low=0, low_valid=True), ["number"]),
    "noise.match_uniform_norm": (
        st.one_of(st.text(max_size=5), st.integers(), st.floats()),
        ["true or false"],
    ),
    "noise.symmetric": (st.one_of(st.text(max_size=5), st.integers(), st.floats()), ["true or false"]),
    "noise.execution": (choice(("concat", "paired")), ["concat", "paired"]),
    "noise.length_mode": (choice(("tokens", "padded")), ["tokens", "padded"]),
    "noise.region": (choice(("all", "prompt", "response")), ["all", "prompt", "response"]),
    "noise.schedule": (choice(("constant", "linear", "cosine")), ["constant", "linear", "cosine"]),
    "noise.seed": (integer(strict=True), ["integer"]),
    "noise.draws": (integer(minimum=1, strict=True), ["integer"]),
}


def minimal():
    return {
        "model": {"name": "m"},
        "data": {"path": "d.json"},
        "noise": {"method": "uniform", "alpha": 5.0},
        "lora": {},
        "training": {"output_dir": "out"},
    }


def with_value(path, value):
    data = minimal()
    section, field = path.split(".")
    data[section][field] = value
    return data


def test_every_field_is_fuzzed():
    """The table above covers every field of every section, so a new field cannot go unchecked."""
    fields = {
        f"{name}.{field}"
        for name, section in TrainConfig.model_fields.items()
        if name != "noise"
        for field in section.annotation.model_fields
    }
    from dataclasses import fields as dataclass_fields

    from symnoise import NoiseConfig

    fields |= {f"noise.{f.name}" for f in dataclass_fields(NoiseConfig)}
    assert fields == set(FIELDS)


@pytest.mark.parametrize("path", sorted(FIELDS))
def test_invalid_values_name_the_field_and_what_it_accepts(path):
    strategy, words = FIELDS[path]
    section, field = path.split(".")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(strategy)
    def check(value):
        TRIED[path] = TRIED.get(path, 0) + 1
        with pytest.raises(ConfigError) as error:
            validate_config(with_value(path, value), source="c.yaml")
        message = str(error.value)
        assert message.startswith("c.yaml: invalid config")
        # The field: "training.seed" for the typed sections; NoiseConfig says "noise: NoiseConfig.seed".
        named = path in message or (section == "noise" and f"NoiseConfig.{field}" in message)
        assert named, (value, message)
        lines = "\n".join(line for line in message.splitlines() if field in line)
        for word in words:  # "a|b": the bound or the expected type, whichever the value broke
            assert any(alternative in lines for alternative in word.split("|")), (value, word, lines)

    check()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), st.text(max_size=20))
def test_any_override_text_is_valid_or_a_config_error(path, raw):
    """Arbitrary text after ``field=`` either validates or raises ConfigError naming the field; never another
    exception (YAML errors, type errors) and never a partial config."""
    TRIED["overrides"] = TRIED.get("overrides", 0) + 1
    overrides = ["model.name=m", "data.path=d.json", "training.output_dir=o", f"{path}={raw}"]
    try:
        config = load_config(None, overrides)
    except ConfigError as error:
        section, field = path.split(".")
        assert path in str(error) or field in str(error), str(error)
    else:
        assert isinstance(config, TrainConfig)


def test_unknown_fields_and_sections_are_named():
    for path in ("model.nmae", "training.lr", "lora.rank", "data.paht"):
        with pytest.raises(ConfigError, match=rf"{path}: unknown field"):
            validate_config(with_value(path, 1))
    with pytest.raises(ConfigError, match="optimizer: unknown field"):
        validate_config({**minimal(), "optimizer": {"name": "adam"}})


def test_cli_rejects_invalid_config_before_loading_data_or_model(tmp_path, monkeypatch, capsys):
    """``symnoise train`` with a bad value exits 2 with the field named, and never reaches data or model."""
    import symnoise.train.recipe as recipe
    from symnoise.cli.main import main

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded something before the config was validated")

    monkeypatch.setattr(recipe, "load_data", forbidden)
    monkeypatch.setattr(recipe, "load_model", forbidden)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **minimal(),
                "model": {"name": "no/such-model"},
                "data": {"path": str(tmp_path / "missing.json")},
            }
        )
    )
    for override, field in [
        ("training.max_steps=0", "training.max_steps"),
        ("training.learning_rate=.inf", "training.learning_rate"),
        ("noise.region=middle", "NoiseConfig.region"),
        ("training.on_nonfinite=ignore", "training.on_nonfinite"),
    ]:
        assert main(["train", str(config), override]) == 2
        err = capsys.readouterr().err
        assert field in err and "Traceback" not in err


def test_zz_report_counts():
    """Prints how many inputs hypothesis tried (for docs/reliability.md); runs last in this file."""
    print(f"\nhypothesis tried {sum(TRIED.values())} invalid inputs over {len(TRIED)} properties")
