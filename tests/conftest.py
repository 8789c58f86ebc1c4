"""Shared fixtures: the real data in ../shared/data (skipped when absent), a tokenizer trained on the fly,
and tiny models built from configs. Nothing here downloads anything."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYMNOISE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

TOKENIZER_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:",
    "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
    "Give three tips for staying healthy. Eat a balanced diet, exercise regularly and sleep well.",
    "Sort the numbers 3 1 2 in ascending order: 1 2 3. Add 12 and 30 to get 42.",
    "The quick brown fox jumps over the lazy dog. abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
]


def run_symnoise(args, cwd=None, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `symnoise` command as a subprocess (``python -m symnoise ARGS``), output captured as text; ``env``
    defaults to this environment with the repository's ``src`` first on the path and one intra-op thread."""
    if env is None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "symnoise", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now, for a launcher's rendezvous, drawn below the kernel's ephemeral
    range: a port the kernel hands out for port 0 can be taken again as the source port of some outgoing
    connection (gloo opens many) before the launcher binds it. A fixed port collides with another test worker."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data folder; tests that need it skip cleanly when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) trained on a few sentences, with pad/bos/eos/unk tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_tiny_model(kind: str = "llama", vocab_size: int = 400, hidden: int = 32, seed: int = 0, **overrides):
    """A 2-layer model of the named family built from its config, in fp32, for CPU tests."""
    import torch
    import transformers

    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    configs = {
        "llama": lambda: transformers.LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "qwen2": lambda: transformers.Qwen2Config(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "gemma": lambda: transformers.GemmaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden // 4,
            max_position_embeddings=256,
            **common,
        ),
        "gpt2": lambda: transformers.GPT2Config(
            n_embd=hidden, n_layer=2, n_head=4, n_positions=256, **common
        ),
        "opt": lambda: transformers.OPTConfig(
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=hidden,
            **common,
        ),
    }
    config = configs[kind]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float()


@pytest.fixture
def tiny_model_factory():
    return make_tiny_model


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    """A tiny Llama and its tokenizer saved with save_pretrained, loadable by name like a hub model."""
    path = tmp_path_factory.mktemp("base")
    make_tiny_model("llama").save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory):
    """36 Alpaca-format rows (half with an input) in a JSON file."""
    import json

    rows = [
        {"instruction": f"Add {a} and {b}.", "input": "" if a % 2 else f"{a} {b}", "output": str(a + b)}
        for a in range(12)
        for b in range(3)
    ]
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(rows))
    return path


def snapshot_sidecars(monkeypatch) -> dict:
    """`symnoise generate` deletes its progress sidecar once model_outputs.json is written; tests that inspect
    the sidecar get its text as it was just before, by output path."""
    from symnoise import files, generation

    snapshots = {}
    real_write = files.write_json_atomic

    def write_and_snapshot(path, obj):
        sidecar = generation.sidecar_path(path)
        if sidecar.is_file():
            snapshots[Path(path)] = sidecar.read_text()
        real_write(path, obj)

    monkeypatch.setattr(files, "write_json_atomic", write_and_snapshot)
    return snapshots


# Tokenised data is cached by content hash (symnoise.data.prepare); keep the tests' cache out of the home folder.
if "SYMNOISE_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["SYMNOISE_CACHE"] = tempfile.mkdtemp(prefix="symnoise-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SYMNOISE_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A single-node Slurm of this session's own (controller and node daemon, state and logs in a temporary
    folder), started by tools/local_slurm.sh and stopped by the PIDs it wrote. Yields the environment for
    `symnoise grid` and the Slurm commands (``SLURM_CONF``). Skipped only outside CI when Slurm is not installed
    or the tests do not run as root; in CI (``CI=true``) that is a failure."""
    import shutil
    import subprocess

    in_ci = os.environ.get("CI") == "true"
    missing = [n for n in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(n) is None]
    if (missing or os.geteuid() != 0) and not in_ci:
        why = f"{', '.join(missing)} not installed" if missing else "a local Slurm needs root"
        pytest.skip(f"{why}: `tools/local_slurm.sh install` (as root) sets up Debian's slurm-wlm and munge")
    folder = tmp_path_factory.mktemp("slurm")
    script = REPO_ROOT / "tools" / "local_slurm.sh"
    started = subprocess.run(
        ["bash", str(script), "start", str(folder)], capture_output=True, text=True, timeout=600
    )
    if started.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(folder)], timeout=60)
        pytest.fail(f"the local Slurm did not start: {started.stderr[-2000:]}")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    try:
        yield env
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        subprocess.run(["bash", str(script), "stop", str(folder)], timeout=60)
