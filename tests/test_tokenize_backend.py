"""The direct Rust tokenizer call (`encode_batch_fast`) gives exactly the ids that ``tokenizer(...)`` gives, on
byte-level BPE, LLaMA-style SentencePiece BPE (byte fallback) and WordPiece with a normaliser, for any text,
special-token strings in the data included; a tokenizer it cannot stand in for keeps the ``tokenizer(...)`` call."""

from __future__ import annotations

import pytest
from conftest import TOKENIZER_CORPUS, build_tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symnoise.data.tokenize import _token_ids, rust_backend

# Part of the floor subset: run against the lowest declared versions (tools/test_floors.sh).
pytestmark = pytest.mark.floor

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def llama_style():
    """SentencePiece-style BPE as LLaMA-2's tokenizer.json has it: a metaspace prefix, byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(
        TOKENIZER_CORPUS * 4,
        trainer=trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *bytes_]),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        TOKENIZER_CORPUS * 4, trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIALS)
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TOKENIZERS = {
    "byte-level BPE": build_tiny_tokenizer(),
    "llama-style": llama_style(),
    "wordpiece": wordpiece(),
}
TEXT = st.lists(
    st.one_of(st.text(max_size=40), st.sampled_from([*SPECIALS, " ", "\n\n", "▁", "é", "🙂", "\t"])),
    max_size=8,
).map("".join)


def reference_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [
        list(ids)
        for ids in tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ]


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, min_size=1, max_size=6))
def test_direct_call_equals_the_tokenizer_call(name, texts):
    tokenizer = TOKENIZERS[name]
    backend = rust_backend(tokenizer)
    assert backend is not None  # the direct path is the one under test
    setting = backend.encode_special_tokens
    ours = _token_ids(tokenizer, texts)
    assert backend.encode_special_tokens == setting  # the tokenizer's own setting is given back
    assert ours == reference_ids(tokenizer, texts)


def test_special_token_strings_in_the_data_stay_text():
    tokenizer = TOKENIZERS["byte-level BPE"]
    (ids,) = _token_ids(tokenizer, ["a </s> b"])
    assert tokenizer.eos_token_id not in ids and tokenizer.decode(ids) == "a </s> b"


def test_a_backend_that_truncates_keeps_the_tokenizer_call():
    """tokenizer(...) lifts a truncation configured in tokenizer.json; the direct call would apply it."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    assert rust_backend(tokenizer) is None
    text = "Give three tips for staying healthy."
    assert len(_token_ids(tokenizer, [text])[0]) > 3
    assert _token_ids(tokenizer, [text]) == reference_ids(build_tiny_tokenizer(), [text])


def test_a_subclass_that_changes_encoding_keeps_the_tokenizer_call():
    from transformers import PreTrainedTokenizerFast

    class Shouting(PreTrainedTokenizerFast):
        def _encode_plus(self, text, *args, **kwargs):
            text = [t.upper() for t in text] if isinstance(text, list) else text.upper()
            return super()._encode_plus(text, *args, **kwargs)

    plain = build_tiny_tokenizer()
    shouting = Shouting(tokenizer_object=plain.backend_tokenizer, eos_token="</s>")
    assert rust_backend(shouting) is None
    assert _token_ids(shouting, ["abc"]) == reference_ids(plain, ["ABC"])
