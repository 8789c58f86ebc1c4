"""SymNoise with an unmodified TRL SFTTrainer, offline: a tiny Llama and tokenizer built on the spot.

With the hub, replace `tiny_model_and_tokenizer()` by
`AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")` and its tokenizer.
Run: python examples/sft_trainer.py
"""

import tempfile

from datasets import Dataset
from transformers import LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

import symnoise
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer


def tiny_model_and_tokenizer(examples):
    tokenizer = train_tokenizer(tokenizer_corpus(examples), vocab_size=512)
    return LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=64, layers=2)), tokenizer


def main() -> None:
    examples, _ = make_task_examples(n_train=64, n_eval=11, seed=0)
    model, tokenizer = tiny_model_and_tokenizer(examples)
    rows = [{"prompt": f"{e.instruction}\n{e.input}\n", "completion": e.output} for e in examples]
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=4,
        per_device_train_batch_size=8,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        max_length=128,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )

    symnoise.hf.add_noise(trainer, symnoise.NoiseConfig("symnoise", alpha=5))  # the one line

    trainer.train()
    for entry in trainer.state.log_history:
        if "loss" in entry:
            print(
                f"step {entry['step']}: loss {entry['loss']:.4f}  noise norm {entry['noise_norm']:.4f}  "
                f"token accuracy {entry['mean_token_accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
