"""SymNoise in a plain PyTorch loop: attach, train, detach. Both execution modes, offline on a tiny Llama.

Run: python examples/custom_loop.py
"""

import torch
from transformers import LlamaForCausalLM

import symnoise
from symnoise.data import tokenize_examples
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer


def pad(items, key, value):
    longest = max(len(item["input_ids"]) for item in items)
    return torch.tensor([item[key] + [value] * (longest - len(item[key])) for item in items])


def batches(dataset, size, pad_id):
    for start in range(0, len(dataset) - size + 1, size):
        items = [dataset[i] for i in range(start, start + size)]
        yield {
            "input_ids": pad(items, "input_ids", pad_id),
            "attention_mask": pad(items, "attention_mask", 0),
            "labels": pad(items, "labels", -100),
        }


def main() -> None:
    torch.manual_seed(0)
    examples, _ = make_task_examples(n_train=64, n_eval=11, seed=0)
    tokenizer = train_tokenizer(tokenizer_corpus(examples), vocab_size=512)
    data = tokenize_examples(examples, tokenizer, "alpaca", max_length=128)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=64, layers=2)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    # concat (the paper's Algorithm 2): one forward over [X + eps; X - eps], loss = mean of both halves.
    with symnoise.attach(model, symnoise.NoiseConfig("symnoise", alpha=5)) as noise:
        for step, batch in enumerate(batches(data, 8, tokenizer.pad_token_id)):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            print(
                f"concat step {step}: loss {loss.item():.4f}, noise norm {noise.last_noise_norm.item():.4f}"
            )

    # paired: the same gradients with two forwards of B instead of one of 2B (lower peak memory).
    with symnoise.attach(model, symnoise.NoiseConfig("symnoise", alpha=5, execution="paired")) as noise:
        for step, batch in enumerate(batches(data, 8, tokenizer.pad_token_id)):
            pair_loss = 0.0
            for weight in noise.paired_passes():
                loss = model(**batch).loss * weight
                loss.backward()
                pair_loss += loss.item()
            optimizer.step()
            optimizer.zero_grad()
            print(f"paired step {step}: loss {pair_loss:.4f}")

    model.eval()  # evaluation and generate() never see noise; after the with-block it is fully detached anyway


if __name__ == "__main__":
    main()
