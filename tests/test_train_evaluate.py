"""Centralized training, the deployed form and re-scoring, on the demo corpus."""

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from fedq.checkpoint import read_checkpoint
from fedq.cli import run_with_user_errors
from fedq.config import FedqConfig, compose_config
from fedq.data.batching import encode_pairs
from fedq.engine import StepSettings, batch_stream, make_optimizer, train_steps
from fedq.errors import ConfigError, FedqError
from fedq.evaluate import evaluate
from fedq.scoring import evaluate_bleu
from fedq.task import build_model, load_task
from fedq.train import train

SMALL_DEMO = ["data.demo_train_size=1500", "data.demo_eval_size=40", "data.vocab_size=400"]


@pytest.fixture()
def cache_overrides(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "fedq-cache"
    return [f"data.cache_dir={cache}", "device=cpu"]


def test_tiny_model_overfits_32_pairs(cache_overrides):
    cfg = compose_config(SMALL_DEMO + cache_overrides + ["model.dropout=0.0"])
    torch.manual_seed(0)
    task = load_task(cfg)
    pairs = task.corpus.train[:32]
    tok = task.tokenizer
    model = build_model(cfg, tok)
    encoded = encode_pairs(pairs, tok)
    stream = batch_stream(encoded, 10_000, tok, seed=0)
    optimizer = make_optimizer(model, 3e-3)
    train_steps(model, stream, optimizer, 150, StepSettings(torch.device("cpu"), tok.pad_id, label_smoothing=0.0))
    bleu, hypotheses = evaluate_bleu(model, tok, pairs, cfg.decode, torch.device("cpu"))
    assert bleu.score > 90, hypotheses[:3]
    assert "tok:13a" in bleu.signature


def test_evaluate_reproduces_bleu_saved_at_training(tmp_path, cache_overrides, console, capsys):
    overrides = SMALL_DEMO + cache_overrides + ["train.max_steps=60", "train.log_every=30", "quant.bits=2"]
    scores = train(compose_config(overrides), tmp_path)
    out = capsys.readouterr().out
    assert "step 60/60" in out and "tgt tok/s" in out and "ETA" in out
    ckpt = tmp_path / "checkpoint"
    for name in ("model.safetensors", "config.yaml", "tokenizer.model", "meta.json", "model.fedq"):
        assert (ckpt / name).is_file()
    assert read_checkpoint(ckpt).config.quant.method == "seq"  # the grid auto chose, named
    size = scores["deployed_size"]
    assert size["file_bytes"] < size["fp32_bytes"] / 3  # 2-bit linear layers, fp32 rest
    rescored = evaluate(compose_config(cache_overrides + [f"ckpt={ckpt}"]))
    assert rescored["valid"] == pytest.approx(scores["valid_bleu"], abs=1e-9)
    assert rescored["test"] == pytest.approx(scores["test_bleu"], abs=1e-9)


def run_cli(module: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *overrides], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=huge"], "model/huge"),
        (["quant.bits=3", "quant.method=binary"], "binary"),
        (["quant.scope=everything", "quant.bits=4"], "scope"),
        (["data=textdir", "data.dir=/nonexistent/corpus"], "/nonexistent/corpus"),
        (["train.max_step=5"], "max_step"),
        (["resume=outputs/somewhere"], "resume= is not used by fedq.train (it takes init_from=)"),
    ],
)
@pytest.mark.e2e
def test_bad_input_is_one_clear_line(overrides, expected, tmp_path):
    """The first line names the problem; no traceback (Hydra may list the valid options below it)."""
    result = run_cli("fedq.train", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    first_line = result.stderr.strip().splitlines()[0]
    assert expected in first_line, result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_another_vocabulary_is_refused(tmp_path, cache_overrides):
    overrides = SMALL_DEMO + cache_overrides + ["train.max_steps=2", "data.max_eval_pairs=5"]
    train(compose_config(overrides), tmp_path)
    other = compose_config(overrides[:2] + ["data.vocab_size=300"] + cache_overrides + [f"init_from={tmp_path}/checkpoint"])
    with pytest.raises(ValueError, match="was trained with tokenizer .* use data.tokenizer="):
        train(other, tmp_path / "second")


def test_user_errors_are_one_line_but_bugs_keep_their_traceback(capsys):
    cfg = OmegaConf.structured(FedqConfig)

    def user_error(config):
        raise ConfigError("data.dir does not exist")

    with pytest.raises(SystemExit) as exit_info:
        run_with_user_errors(user_error, cfg)
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: data.dir does not exist\n"

    def bug(config):
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(ValueError, match="broadcast"):  # not swallowed into a one-line message
        run_with_user_errors(bug, cfg)


def test_evaluate_scores_other_sets_and_refuses_what_it_ignores(tmp_path, cache_overrides, console, capsys):
    overrides = SMALL_DEMO + cache_overrides + ["train.max_steps=2"]
    train(compose_config(overrides), tmp_path)
    ckpt = tmp_path / "checkpoint"
    capsys.readouterr()

    for ignored in ("model.d_model=512", "fl.rounds=3"):
        with pytest.raises(ConfigError, match=f"fedq.evaluate does not use {ignored}: the checkpoint fixes the model"):
            evaluate(compose_config(cache_overrides + [f"ckpt={ckpt}", "data.max_eval_pairs=7", ignored]),
                     ["data.max_eval_pairs=7", ignored])
    scores = evaluate(compose_config(cache_overrides + [f"ckpt={ckpt}", "data.max_eval_pairs=7"]), ["data.max_eval_pairs=7"])
    out = capsys.readouterr().out
    assert "the checkpoint's corpus: demo de->en, valid 7 / test 7 pairs" in out and "(7 sentences" in out
    assert set(scores) == {"valid", "test"}

    (tmp_path / "mine.de").write_text("der Hund schläft .\ndie Katze isst .\n")
    (tmp_path / "mine.en").write_text("the dog sleeps .\nthe cat eats .\n")
    files = [f"eval.src={tmp_path / 'mine.de'}", f"eval.ref={tmp_path / 'mine.en'}"]
    scores = evaluate(compose_config(cache_overrides + [f"ckpt={ckpt}", *files]), files)
    assert list(scores) == ["eval"] and "(2 pairs)" in capsys.readouterr().out

    with pytest.raises(FedqError, match="translates de->en, not en->de"):
        evaluate(compose_config(cache_overrides + [f"ckpt={ckpt}", "data.src=en", "data.tgt=de"]), ["data.src=en", "data.tgt=de"])


def test_limiting_the_evaluation_sets_reuses_the_cached_tokenizer(tmp_path, monkeypatch):
    import fedq.data.tokenizer as tokenizers

    settings = ["data.demo_train_size=300", "data.demo_eval_size=20", "data.vocab_size=120", f"data.cache_dir={tmp_path}"]
    first = load_task(compose_config(settings)).tokenizer
    monkeypatch.setattr(tokenizers, "train_sentencepiece", lambda *a, **k: pytest.fail("trained again"))
    again = load_task(compose_config(settings + ["data.max_eval_pairs=5"])).tokenizer
    assert again.fingerprint == first.fingerprint
