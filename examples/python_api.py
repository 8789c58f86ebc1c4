"""The Python API: the command line's configs and overrides, from a script, offline.

    config = symnoise.load_config("qwen2.5-0.5b/alpaca-symnoise-lora", ["data.path=my_data.jsonl"])
    result = symnoise.train(config)

Here a tiny Llama and tokenizer, saved to a folder that `model.name` points at as it would at a hub name, stand in
for Qwen2.5-0.5B-Instruct, and the data is a small generated Alpaca-format file, so nothing is downloaded.
Run: python examples/python_api.py
"""

import json
import tempfile
from pathlib import Path

from transformers import LlamaForCausalLM

import symnoise
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer


def write_tiny_base_and_data(work: Path) -> tuple[Path, Path]:
    examples, _ = make_task_examples(n_train=64, n_eval=11, seed=0)
    tokenizer = train_tokenizer(tokenizer_corpus(examples), vocab_size=512)
    LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=64, layers=2)).save_pretrained(
        work / "base"
    )
    tokenizer.save_pretrained(work / "base")
    rows = [{"instruction": e.instruction, "input": e.input, "output": e.output} for e in examples]
    (work / "data.json").write_text(json.dumps(rows))
    return work / "base", work / "data.json"


def main() -> None:
    work = Path(tempfile.mkdtemp())
    base, data = write_tiny_base_and_data(work)
    config = symnoise.load_config(
        "qwen2.5-0.5b/alpaca-symnoise-lora",
        [
            f"model.name={base}",
            "model.license=null",
            f"data.path={data}",
            "data.template=alpaca",
            f"training.output_dir={work / 'run'}",
            "training.max_steps=4",
            "training.per_device_batch_size=8",
            "training.effective_batch_size=8",
            "training.learning_rate=1e-3",
            "training.device=cpu",
            "training.report_to=[]",
            "training.gradient_checkpointing=false",
            "lora.target_modules=[q_proj,v_proj]",
        ],
    )
    result = symnoise.train(config)
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            print(f"step {entry['step']}: loss {entry['loss']:.4f}  noise norm {entry['noise_norm']:.4f}")
    print(f"{result.steps} steps; LoRA adapter and model card in {result.run_dir}")


if __name__ == "__main__":
    main()
