from symnoise.cli.main import main


def test_cli_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert "COMMAND" in capsys.readouterr().out


def test_tiny_models_build(tiny_tokenizer, tiny_model_factory):
    import torch

    ids = torch.tensor([tiny_tokenizer("Add 12 and 30")["input_ids"]])
    for kind in ["llama", "qwen2", "gemma", "gpt2", "opt"]:
        model = tiny_model_factory(kind)
        out = model(input_ids=ids, labels=ids)
        assert torch.isfinite(out.loss)
