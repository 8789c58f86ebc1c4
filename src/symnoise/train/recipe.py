"""The `symnoise train` recipe: instruction fine-tuning with noisy embeddings on transformers' Trainer.

Order of work: validate the config (done by the caller), check the run directory, load and tokenise the data
(bad rows fail here, before any model is loaded), load the model, train with `symnoise.hf.add_noise`, and
write the run directory::

    RUN/run_start.json         what the run was started with (config, data hash), checked by --resume
    RUN/symnoise.lock          held by the running process (PID and host inside); see train/run_dir.py
    RUN/config.yaml            the resolved config
    RUN/symnoise_run.json      template, max length and noise, read by `symnoise generate`
    RUN/data_report.json       per source: rows read, skipped (and why), warnings, conversations, assistant
                               turns trained and truncated by max_length, examples dropped
    RUN/metrics.jsonl, .csv    one line per logging step: loss, lr, grad norm, noise norm, tokens/s, memory
    RUN/runs/                  TensorBoard event files
    RUN/checkpoint-N/          Trainer checkpoints, with each rank's noise generator state (written as
                               RUN/tmp-checkpoint-N/ and renamed when complete)
    RUN/nonfinite_steps.jsonl  steps with a NaN/inf loss or gradient, their examples, and what was done
    RUN/model.safetensors ...  the final model (or LoRA adapter) and tokenizer, and README.md (model card)

``training.save_model: false`` leaves out the checkpoints and the final model (a benchmark or trial run).

Works unchanged under ``accelerate launch`` / ``torchrun`` (DDP, FSDP, DeepSpeed through accelerate configs): the
distributed state is set up before the model is loaded (so FSDP's cpu_ram_efficient_loading and DeepSpeed's
zero3_init apply), every rank takes part in the final save, and without CUDA the processes train on the CPU over
gloo. Full fine-tuning keeps float32 master weights under bf16 autocast unless ``training.pure_bf16`` is set.
"""

from __future__ import annotations

import gc
import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from ..data.check import check_sources
from ..data.mixture import TrainingData, prepare_training_data, specs_from_section
from ..data.packing import PackedRowsCollator, TrainedLogitsOnly, supports_trained_logits_only
from ..dtypes import gpu_supports_bf16
from ..files import write_json_atomic, write_text_atomic
from ..hf import add_noise
from ..layout import RunLayout
from . import trainer_args
from .config import ConfigError, TrainConfig
from .distributed import (
    check_launch,
    check_nonfinite_mode,
    check_world_size,
    describe_world,
    is_main_process,
    keep_fsdp_on_cpu,
    quantized_device_map,
    world_size,
)
from .preflight import check_before_data, check_before_model, check_chat_template, probe_writable
from .reliability import (
    IndexedDataset,
    check_free_space,
    checkpoint_step,
    discard_incomplete,
    indexing_collator,
    last_complete_checkpoint,
    truncate_log,
)
from .run_dir import claim_run_dir
from .sharing import check_sharing, finish_wandb, push_to_hub, start_wandb
from .start_record import pinned_revision, record_model_commit

logger = logging.getLogger("symnoise.train")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    train_examples: int


def check_run_dir(config: TrainConfig, resume: bool) -> Path:
    """The run directory must be writable and, when resuming, hold a complete checkpoint.

    Whether a fresh run may use it at all was decided by `run_dir.claim_run_dir`. Saves cut short by a crash
    (``tmp-*`` directories) are removed; they never count as checkpoints.
    """
    run_dir = Path(config.training.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"training.output_dir: {run_dir} exists and is not a directory")
    if resume and last_complete_checkpoint(run_dir) is None:
        raise ConfigError(
            f"--resume: no checkpoint in {run_dir} to resume from (saves cut short do not count)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        discard_incomplete(run_dir)
    probe_writable(run_dir)
    return run_dir


def load_tokenizer(config: TrainConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        config.model.name, revision=config.model.revision, trust_remote_code=config.model.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_tokenizer_for_data(config: TrainConfig):
    """The tokenizer, after the model source is checked (cache, offline mode, LoRA targets); when either fails,
    the data is read first so that a bad row is reported before a tokenizer or model problem (reading is cheap;
    tokenising needs the tokenizer)."""
    try:
        check_before_model(config)
        return load_tokenizer(config)
    except Exception:
        specs, eval_spec = specs_from_section(config.data)
        for _ in check_sources(specs, eval_spec, None, config.data.max_length):
            pass
        raise


def load_data(config: TrainConfig, tokenizer) -> TrainingData:
    """Read, check and tokenise every source (bad rows fail here, before the model is loaded); cached by content."""
    specs, eval_spec = specs_from_section(config.data)
    return prepare_training_data(
        specs, tokenizer, config.data.max_length, config.training.seed, eval_spec, cache=config.data.cache
    )


def resolve_precision(config: TrainConfig, use_cuda: bool) -> str:
    precision = config.training.precision
    if precision == "auto":
        return "bf16" if use_cuda and gpu_supports_bf16() else "fp32"
    if precision in ("bf16", "fp16") and not use_cuda:
        raise ConfigError(f"training.precision={precision} needs a CUDA GPU; use fp32 (or auto) on CPU")
    return precision


def weights_dtype(config: TrainConfig, precision: str) -> torch.dtype:
    """The dtype the model is loaded in. Full fine-tuning trains float32 master weights (bf16/fp16 is the compute
    dtype, through autocast): AdamW updates at the papers' lr (5e-5) are mostly below bf16's resolution and a
    bf16 weight would not move. Only ``training.pure_bf16`` trains bf16 weights; under LoRA/QLoRA the frozen base
    takes ``model.dtype`` (auto: bf16 when training in bf16) and peft keeps the adapters in float32."""
    if config.training.pure_bf16:
        return torch.bfloat16
    if not config.lora.enabled:
        return torch.float32
    return {
        "auto": {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision],
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[config.model.dtype]


def load_model(config: TrainConfig, precision: str, local_rank: int = 0):
    """Load the model to train. Call it after the distributed state exists (``TrainingArguments.device``), so that
    from_pretrained sees FSDP's cpu_ram_efficient_loading and DeepSpeed's zero3_init; ``local_rank`` is this
    process's GPU for a QLoRA model."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(
        revision=config.model.revision,
        dtype=weights_dtype(config, precision),
        trust_remote_code=config.model.trust_remote_code,
    )
    if config.model.attn_implementation:
        kwargs["attn_implementation"] = config.model.attn_implementation
    if config.lora.quantize_4bit:
        kwargs["quantization_config"] = quantization_config(precision)
        kwargs["device_map"] = quantized_device_map(local_rank)
    model = AutoModelForCausalLM.from_pretrained(
        config.model.name, use_kernels=config.model.use_kernels, **kwargs
    )
    model.config.use_cache = False  # no cache in training; packed rows also need it off
    if config.lora.enabled:
        model = wrap_lora(model, config)
    return model


# The dtype QLoRA's 4-bit layers compute in, for each resolved training.precision: the dtype autocast gives the
# rest of the model, so that a GPU without bf16 (fp16 or fp32 training) does not compute the base in bf16.
QLORA_COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def quantization_config(precision: str):
    """NF4 weights with double quantisation, computing in the training precision's dtype."""
    if not torch.cuda.is_available():
        raise ConfigError("lora.quantize_4bit (QLoRA) needs a CUDA GPU; none is available")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "lora.quantize_4bit (QLoRA) needs bitsandbytes: pip install 'symnoise[gpu]'"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=QLORA_COMPUTE_DTYPES[precision],
    )


def wrap_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.lora.quantize_4bit:
        model = prepare_model_for_kbit_training(model, config.training.gradient_checkpointing)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def make_collator(config: TrainConfig, tokenizer):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if config.data.packing == "padding_free":
        # The varlen kwargs spare FlashAttention re-deriving them from position ids (a host sync) in every layer.
        return DataCollatorWithFlattening(
            return_position_ids=True, separator_id=-100, return_flash_attn_kwargs=True
        )
    if config.data.packing == "rows":
        return PackedRowsCollator(row_length=config.data.max_length, pad_token_id=tokenizer.pad_token_id)
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")


def training_arguments(
    config: TrainConfig, run_dir: Path, precision: str, has_eval: bool, use_cpu: bool = False
):
    from transformers import TrainingArguments

    t = config.training
    accumulation = t.effective_batch_size // t.per_device_batch_size
    if accumulation % world_size():
        raise ConfigError(
            f"training.effective_batch_size={t.effective_batch_size} is not divisible by "
            f"per_device_batch_size x processes = {t.per_device_batch_size} x {world_size()}"
        )
    own = dict(
        output_dir=str(run_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=accumulation // world_size(),
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        # Trainer's filter reads each micro-batch's loss on the host (a GPU sync per micro-batch); the
        # non-finite guard covers such losses and RecipeTrainer.training_step keeps them out of the log.
        logging_nan_inf_filter=False,
        # Batches go to the GPU as asynchronous copies from pinned memory; a blocking copy waits for the GPU
        # to finish all queued work, once per micro-batch.
        accelerator_config={"non_blocking": True},
        save_strategy="steps" if t.save_model else "no",  # "no": not even the checkpoint at the last step
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps,
        prediction_loss_only=True,  # eval reports the loss; never gather eval logits
        report_to=list(t.report_to),
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if config.data.group_by_length else "random",
        use_cpu=use_cpu or t.device == "cpu",
        disable_tqdm=not sys.stderr.isatty(),  # a bar redrawn into a log file or a job's output is noise
        optim="adamw_torch",
        label_names=["labels"],
        run_name=t.run_name or run_dir.name,
    )
    try:
        return TrainingArguments(**trainer_args.merge(own, t.trainer_args))
    except (ValueError, TypeError) as error:  # a pass-through value transformers refuses
        if not t.trainer_args:
            raise
        raise ConfigError(
            f"training.trainer_args: transformers.TrainingArguments refused the settings: {error}"
        ) from None


def write_run_files(config: TrainConfig, run_dir: Path, template: str, data: TrainingData) -> None:
    layout = RunLayout(run_dir)
    write_text_atomic(layout.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_json_atomic(
        layout.run_info,
        {
            "symnoise_version": __version__,
            "template": template,
            "max_length": config.data.max_length,
            "noise": config.noise.to_dict(),
            "model": config.model.name,
            "dataset": config.data.source_label,
            "format": data.format,
            "lora": config.lora.enabled,
        },
    )
    write_json_atomic(layout.data_report, data.to_dict())


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run one fine-tuning job as configured; returns where it wrote and how it ended.

    The run directory is locked for the whole run; ``resume`` continues it only with a config that trains the
    same way; ``overwrite`` deletes an earlier run's files first (see `symnoise.train.run_dir`).
    """
    check_launch()
    check_nonfinite_mode(config.training.on_nonfinite)
    check_before_data(config)
    with claim_run_dir(config, resume, overwrite) as claim:
        result = _train(config, claim.resume)
    release_memory()
    return result


def release_memory() -> None:
    """Free what a finished run leaves behind, before whatever runs next in the process loads a model.

    The Trainer and the noise attachment reference each other, so the trained model, its gradients and the
    optimizer state (16 bytes per parameter under AdamW) stay allocated until the cyclic garbage collector next
    runs, possibly never before the grid's generation stage loads another model onto the same GPU. Collected
    here, and the blocks CUDA's caching allocator kept for them returned to the GPU.
    """
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def _train(config: TrainConfig, resume: bool) -> TrainResult:
    from transformers import set_seed

    # Imported when a run starts, like transformers itself: they import transformers' Trainer.
    from .final import last_training_loss, save_final, trained_to_the_end
    from .trainer import RecipeTrainer, TrainingStopped, clear_stop_request, preemption_notice

    check_sharing(config)
    run_dir = check_run_dir(config, resume)
    commit = pinned_revision(run_dir, config) if resume else None
    if commit is not None:
        logger.info(
            "--resume: loading %s at commit %s, the one this run started with", config.model.name, commit
        )
        config = config.model_copy(update={"model": config.model.model_copy(update={"revision": commit})})
    set_seed(config.training.seed)
    use_cuda = torch.cuda.is_available() and config.training.device != "cpu"
    precision = resolve_precision(config, use_cuda)
    # Built before tokenizer and model load: a value transformers refuses (training.trainer_args) costs no load.
    # It also makes the distributed state, before the model is loaded; without CUDA the processes train on the
    # CPU over gloo (otherwise torchrun on a CPU machine would train N independent copies).
    args = training_arguments(
        config, run_dir, precision, config.data.eval_path is not None, use_cpu=not use_cuda
    )
    logger.info("%s", describe_world(args))
    check_world_size(args.world_size)
    tokenizer = load_tokenizer_for_data(config)
    check_chat_template(config, tokenizer, config.data.template)
    # Each node's first process tokenises into the cache while the others wait, then opens what it wrote.
    with args.main_process_first(local=True, desc="tokenising") if config.data.cache else nullcontext():
        data = load_data(config, tokenizer)
    if args.world_size > 1:
        logger.info(
            "process %d: training data %s",
            args.process_index,
            "opened from the cache" if data.from_cache else "tokenised",
        )
    if is_main_process():  # one summary per run, not one per rank
        for line in data.summary_lines():
            logger.info("%s", line)
    template, dataset, eval_dataset = data.template, data.train, data.eval
    if is_main_process():
        write_run_files(config, run_dir, template, data)
    if not use_cuda:
        keep_fsdp_on_cpu()
    _log_efficient_loading(args.process_index)
    model = load_model(config, precision, args.local_process_index)
    if is_main_process():
        record_model_commit(run_dir, config)
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        logger.info("process %d: model partitioned while loading (DeepSpeed zero3_init)", args.process_index)
    if config.training.save_model:
        check_free_space(run_dir, model, config.lora.enabled, config.training.save_total_limit or 1)
    collator = make_collator(config, tokenizer)
    if config.training.trained_logits_only:
        if supports_trained_logits_only(model):
            collator = TrainedLogitsOnly(collator)
        else:
            logger.info(
                "training.trained_logits_only: %s does not take per-row logits_to_keep; computing all logits",
                type(model).__name__,
            )
    trainer = RecipeTrainer(
        model=model,
        args=args,
        train_dataset=IndexedDataset(dataset),
        eval_dataset=eval_dataset,
        data_collator=indexing_collator(collator),
        processing_class=tokenizer,
        run_dir=run_dir,
        on_nonfinite=config.training.on_nonfinite,
        sources=dataset.sources,
    )
    add_noise(trainer, config.noise)  # wraps the instance's methods: see RecipeTrainer for the order
    checkpoint = _resume_point(run_dir) if resume else None
    wandb_run = start_wandb(config, run_dir) if trainer.is_world_process_zero() else None
    try:
        if checkpoint is not None and trained_to_the_end(checkpoint, config):
            logger.info("%s holds every step of the run; writing the final model from it", checkpoint)
            final = trainer.load_finished(checkpoint)
            steps = trainer.state.global_step
        else:
            final = None
            with preemption_notice():
                steps = trainer.train(resume_from_checkpoint=checkpoint).global_step
            if trainer.preemption.stopped_at is not None:
                clear_stop_request()
                raise TrainingStopped(
                    f"stopped at step {steps} on a preemption notice (USR1); {run_dir}/checkpoint-{steps} holds "
                    "the run: `symnoise train CONFIG --resume` continues it"
                )
        final_loss = last_training_loss(trainer)
        save_final(trainer, tokenizer, config, run_dir, template, final_loss, final)  # every rank takes part
        if trainer.is_world_process_zero() and config.training.push_to_hub:
            push_to_hub(config, run_dir)
    finally:
        finish_wandb(wandb_run)
    return TrainResult(run_dir, steps, final_loss, len(dataset))


def _log_efficient_loading(process: int) -> None:
    """Say when from_pretrained will load for FSDP's cpu_ram_efficient_loading (transformers sees it only once the
    process group exists): the model is sharded from rank 0's weights, broadcast to the other ranks."""
    from transformers.integrations import is_fsdp_enabled

    if is_fsdp_enabled():
        logger.info(
            "process %d: loading for FSDP cpu_ram_efficient_loading (rank 0's weights are broadcast)", process
        )


def _resume_point(run_dir: Path) -> str:
    """The last complete checkpoint; metrics logged after it (by the run that crashed) are dropped, since the
    resumed run logs those steps again."""
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(
            f"--resume: no checkpoint in {run_dir} to resume from (saves cut short do not count)"
        )
    if is_main_process():
        dropped = truncate_log(RunLayout(run_dir).metrics, checkpoint_step(checkpoint))
        logger.info(
            "resuming from %s%s",
            checkpoint,
            f" ({dropped} metrics lines after it dropped)" if dropped else "",
        )
    return str(checkpoint)
