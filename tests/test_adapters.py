"""Federated adaptation of a pre-trained model: low-rank adapters over its frozen low-bit base, clients' held-out text."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedq.checkpoint import read_checkpoint
from fedq.comm.downlink import Broadcaster
from fedq.config import compose_config, validate_config
from fedq.data.batching import encode_pairs
from fedq.errors import ConfigError, FedqError
from fedq.fl.client import client_federation, client_round
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.protocol import TrainRequest
from fedq.fl.reporting import GlobalModelScorer
from fedq.fl.shards import held_count
from fedq.fl.weights import model_to_vector, vector_to_model
from fedq.model.adapters import AdapterConfig, add_adapters
from fedq.model.transformer import ModelConfig, Transformer
from fedq.quant.deployed import load_deployed_bytes, pack_deployed, read_deployed_tensors
from fedq.report.compare import write_report
from fedq.report.run_log import min_median_max_bleu
from fedq.scoring import evaluate_bleu
from fedq.task import build_model, load_task
from fedq.train import train

DEMO = ["data.demo_train_size=900", "data.demo_eval_size=12", "data.vocab_size=300", "model.d_model=32",
        "model.ffn_dim=64", "device=cpu", "quant.bits=2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2-bit QAT checkpoint trained centrally (the server's start), and the settings of the clients' data."""
    folder = tmp_path_factory.mktemp("adapt")
    data = DEMO + [f"data.cache_dir={folder / 'cache'}"]
    train(compose_config(data + ["train.max_steps=150", "train.log_every=100"]), folder / "start")
    checkpoint = folder / "start" / "checkpoint"
    return checkpoint, data + [f"init_from={checkpoint}", f"data.tokenizer={checkpoint / 'tokenizer.model'}"]


def small_model(rank: int, seed: int = 3, torch_seed: int = 0, alpha: float = 8.0) -> Transformer:
    torch.manual_seed(torch_seed)
    model = Transformer(ModelConfig(d_model=16, n_heads=2, ffn_dim=24, enc_layers=1, dec_layers=1, dropout=0.0), 50, 0)
    return add_adapters(model, AdapterConfig(rank=rank, alpha=alpha), seed).eval()


def test_averaging_the_b_factors_is_averaging_the_clients_low_rank_updates():
    """FFA-LoRA: A is the same frozen matrix on every client, so FedAvg of B gives the average of the products B A."""
    clients = [small_model(4, torch_seed=i) for i in range(3)]  # A comes from the run's seed, not torch's state
    rng = np.random.default_rng(0)
    vectors = [rng.normal(0, 0.3, model_to_vector(c).size).astype(np.float32) for c in clients]
    for client, vector in zip(clients, vectors):
        vector_to_model(client, vector)
    averaged = small_model(4)
    vector_to_model(averaged, np.mean(vectors, axis=0))
    for name, layer in averaged.named_modules():
        if hasattr(layer, "lora_b"):
            products = [c.get_submodule(name).lora_b @ c.get_submodule(name).lora_a for c in clients]
            torch.testing.assert_close(layer.lora_b @ layer.lora_a, torch.stack(products).mean(0), rtol=1e-5, atol=1e-6)


def test_only_the_adapters_train_and_travel_and_a_packed_file_merges_them():
    model = small_model(2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert model_to_vector(model).size == sum(m.out_features * 2 for m in linears)  # the B factors, nothing else
    assert [p for p in model.parameters() if p.requires_grad] == [m.lora_b for m in linears]
    assert small_model(2, seed=3).encoder_layers[0].self_attn.q_proj.lora_a.equal(linears[0].lora_a)  # seed -> same A
    assert not small_model(2, seed=4).encoder_layers[0].self_attn.q_proj.lora_a.equal(linears[0].lora_a)
    vector_to_model(model, np.random.default_rng(1).normal(0, 0.5, model_to_vector(model).size).astype(np.float32))
    src, tgt = torch.randint(4, 50, (2, 6)), torch.randint(4, 50, (2, 5))
    plain = small_model(0)
    with torch.no_grad():
        assert not torch.allclose(model(src, tgt), plain(src, tgt), atol=1e-3)  # the adapters change the output
        merged, _ = load_deployed_bytes(pack_deployed(model, {})[0])
        torch.testing.assert_close(merged(src, tgt), model(src, tgt), rtol=1e-4, atol=1e-4)
    # the adapter path is scaled by alpha / rank: twice the alpha, twice the change of a layer's output
    doubled = small_model(2, alpha=16.0)
    vector_to_model(doubled, model_to_vector(model))
    x = torch.randn(3, 16)
    layer, twice = model.encoder_layers[0].self_attn.q_proj, doubled.encoder_layers[0].self_attn.q_proj
    with torch.no_grad():
        base = torch.nn.functional.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(twice(x) - base, 2 * (layer(x) - base))
        assert (layer(x) - base).abs().max() > 0


def test_a_device_holds_the_frozen_base_as_its_codes_and_computes_what_the_servers_model_computes(pretrained):
    _, overrides = pretrained
    cfg = compose_config(overrides + ["clients=2", "adapter.rank=4"])
    server, device = Federation(cfg), client_federation(cfg)
    state = device.model.state_dict()
    assert not any(k.endswith("proj.weight") or k.endswith("fc1.weight") for k in state)  # no latent weights
    assert state["encoder_layers.0.ffn.fc1.codes"].dtype == torch.int8
    vector = np.random.default_rng(0).normal(0, 0.1, server.numel).astype(np.float32)
    src, tgt = torch.randint(4, 200, (2, 7)), torch.randint(4, 200, (2, 5))
    grads = []
    for model in (server.model, device.model):
        vector_to_model(model, vector)
        model.eval()
        model(src, tgt).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    with torch.no_grad():
        assert torch.equal(server.model(src, tgt), device.model(src, tgt))
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().max() > 0


def test_a_client_round_trains_the_adapters_and_leaves_the_low_bit_base_bit_identical(pretrained):
    _, overrides = pretrained
    federation = client_federation(compose_config(overrides + ["clients=2", "fl.local_steps=3", "adapter.rank=4"]))
    base_before = {k: v.clone() for k, v in federation.model.state_dict().items() if not k.endswith("lora_b")}
    start = federation.initial_vector()
    assert not start.any()  # B starts at zero: round 0 is the pre-trained model
    request = TrainRequest(0, 1, Broadcaster(federation.downlink, federation.seeded).message_for(0, start, 1))
    reply = client_round(federation, request, ClientStore(None))
    update = federation.uplink.decode(reply.arrays, start.size)
    assert np.abs(update).max() > 0
    after = federation.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())  # codes, scales, norms, embedding, A


def test_the_start_is_the_checkpoints_packed_model(pretrained):
    """init_from loads the learned quantizer steps too: the model a run starts from packs to the same codes."""
    checkpoint, overrides = pretrained
    cfg = compose_config(overrides + ["adapter.rank=4"])
    model = build_model(cfg, load_task(cfg).tokenizer, cfg.init_from)
    _, ours = read_deployed_tensors(pack_deployed(model, {})[0])
    _, theirs = read_deployed_tensors(read_checkpoint(checkpoint).deployed_path.read_bytes())
    for name, tensor in theirs.items():
        if hasattr(tensor, "codes"):
            assert np.array_equal(ours[name].codes, tensor.codes) and np.array_equal(ours[name].scales, tensor.scales)


def test_each_client_holds_out_its_last_pairs_and_never_trains_on_them(pretrained):
    _, overrides = pretrained
    federation = Federation(compose_config(overrides + ["clients=3", "partition.holdout=0.25"]))
    shards = federation.data
    train_pairs = federation.task.corpus.train
    encoded = encode_pairs(train_pairs, federation.tokenizer)
    seen: set[int] = set()
    for client in range(len(shards)):
        held = shards.held_out(client)
        size = len(held) + len(shards.shard(client))
        assert len(held) == held_count(size, 0.25) == round(0.25 * size)
        assert not set(held) & seen
        seen |= set(held)
        trained = shards.shard(client)
        assert all(encoded[i] not in trained for i in held)  # held-out text is not in its training pairs
    held_all = [i for c in range(len(shards)) for i in shards.held_out(c)]
    all_trained = [pair for c in range(len(shards)) for pair in shards.shard(c)]
    assert len(held_all) + len(all_trained) <= len(train_pairs)
    assert "held out per client" in shards.describe()
    assert held_count(1, 0.5) == 0 and held_count(2, 0.01) == 1 and held_count(4, 0.99) == 3


def test_each_clients_own_text_score_is_its_held_out_pairs_only(pretrained, tmp_path):
    _, overrides = pretrained
    federation = Federation(compose_config(overrides + ["clients=3", "partition.holdout=0.25", "adapter.rank=4"]))
    vector = np.random.default_rng(2).normal(0, 0.2, federation.numel).astype(np.float32)
    scores = GlobalModelScorer(federation, tmp_path).start_and_end(federation.initial_vector(), vector)
    train_pairs = federation.task.corpus.train
    for when, weights in (("initial", federation.initial_vector()), ("final", vector)):
        vector_to_model(federation.model, weights)
        merged, _ = load_deployed_bytes(pack_deployed(federation.model, {})[0])
        for client in range(3):
            own = [train_pairs[i] for i in federation.data.held_out(client)]
            expected, _ = evaluate_bleu(merged, federation.tokenizer, own, federation.cfg.decode, torch.device("cpu"))
            assert scores["own_text_bleu"][when][client] == pytest.approx(expected.score)
    assert len({round(x, 6) for x in scores["own_text_bleu"]["initial"]}) == 3  # three different texts, told apart
    shards = federation.data  # a client that holds nothing out (one pair) is left out of the scores, not a crash
    first = int(shards.held_clients[1])
    shards.held, shards.held_clients = shards.held[first:], np.maximum(shards.held_clients - first, 0)
    fewer = GlobalModelScorer(federation, tmp_path).start_and_end(federation.initial_vector(), vector)["own_text_bleu"]
    assert fewer["initial"] == scores["own_text_bleu"]["initial"][1:] and fewer["final"] == scores["own_text_bleu"]["final"][1:]
    assert scores["initial_test_bleu"] == pytest.approx(
        evaluate_bleu(load_deployed_bytes(pack_deployed(build_model(federation.cfg, federation.tokenizer, federation.cfg.init_from), {})[0])[0],
                      federation.tokenizer, federation.task.corpus.test, federation.cfg.decode, torch.device("cpu"))[0].score)


def test_a_personal_score_is_the_clients_next_round_kept_on_the_device_and_scored_on_its_held_out_pairs(pretrained, tmp_path):
    """fl.personal_steps: what a client's round after the last would train from the final model (fp32 both ways, so
    the server sees that model exactly), scored on the client's held-out pairs, per client."""
    _, overrides = pretrained
    cfg = compose_config(overrides + ["clients=3", "partition.holdout=0.25", "adapter.rank=4", "fl.rounds=1",
                                      "fl.local_steps=4", "fl.personal_steps=4", "fl.local_lr=0.05", "comm=fp32"])
    federation = Federation(cfg)
    final = np.random.default_rng(2).normal(0, 0.05, federation.numel).astype(np.float32)
    own = GlobalModelScorer(federation, tmp_path).start_and_end(federation.initial_vector(), final)["own_text_bleu"]
    client = client_federation(cfg)
    train_pairs = federation.task.corpus.train
    for c in range(3):
        request = TrainRequest(c, 2, Broadcaster(client.downlink, client.seeded).message_for(c, final, 2))
        local = final + client.uplink.decode(client_round(client, request, ClientStore(None)).arrays, final.size)
        vector_to_model(federation.model, local)
        merged, _ = load_deployed_bytes(pack_deployed(federation.model, {})[0])
        held = [train_pairs[i] for i in federation.data.held_out(c)]
        expected, _ = evaluate_bleu(merged, federation.tokenizer, held, cfg.decode, torch.device("cpu"))
        assert own["personal"][c] == pytest.approx(expected.score)
    assert own["personal"] != own["final"]  # four steps at this lr change what some client translates


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["fl.personal_steps=3"], "fl.personal_steps=3 scores each client on its held-out pairs"),
        (["fl.personal_steps=-1", "partition.holdout=0.2"], "fl.personal_steps=-1 must be >= 0"),
        (["adapter.rank=40"], "adapter.rank=40 is larger than the narrowest linear layer (32 wide)"),
        (["adapter.rank=-1"], "adapter.rank=-1 must be >= 0"),
        (["partition.holdout=1.0"], "partition.holdout=1.0 must be in [0, 1)"),
        (["adapter.rank=4", "quant.act_bits=8"], "adapter.rank with quant.act_bits"),
    ],
)
def test_impossible_adapter_settings_are_one_line(pretrained, extra, message):
    _, overrides = pretrained
    with pytest.raises(FedqError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate_config(compose_config(overrides + extra))


def test_adapters_without_a_pre_trained_base_and_a_start_from_another_tokenizer_are_refused(pretrained):
    checkpoint, overrides = pretrained
    with pytest.raises(ConfigError, match="adapters train over a frozen pre-trained base; give init_from"):
        validate_config(compose_config(DEMO + ["adapter.rank=4"]))
    own_tokenizer = [o for o in overrides if not o.startswith("data.tokenizer=")] + ["data.vocab_size=250"]
    cfg = compose_config(own_tokenizer)
    theirs = read_checkpoint(checkpoint).tokenizer.fingerprint[:12]
    ours = load_task(cfg).tokenizer.fingerprint[:12]
    with pytest.raises(ValueError, match=f"tokenizer {theirs} .* this run's is {ours} .*data.tokenizer="):
        build_model(cfg, load_task(cfg).tokenizer, cfg.init_from)


@pytest.mark.e2e
def test_federated_adapters_end_to_end_with_flower_and_ray(pretrained, tmp_path):
    """Adapters travel instead of the model, the base comes back bit-identical, and the summary scores the start and
    each client's held-out pairs."""
    checkpoint, overrides = pretrained
    out = tmp_path / "run"
    run = [*overrides, "clients=3", "fl.clients_per_round=2", "fl.rounds=2", "fl.local_steps=3", "fl.local_lr=0.01",
           "adapter.rank=4", "partition.holdout=0.2", "fl.personal_steps=2", f"hydra.run.dir={out}"]
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", *run], capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    start = json.loads((checkpoint / "meta.json").read_text())
    cfg = compose_config(run[:-1])
    numel = Federation(cfg).numel
    assert numel == sum(4 * m.out_features for m in build_model(cfg, load_task(cfg).tokenizer).modules()
                        if isinstance(m, torch.nn.Linear))
    assert summary["fp32_uplink_bytes"] == 2 * 2 * 4 * numel  # 2 rounds x 2 clients x the B factors in fp32
    assert summary["initial_test_bleu"] == pytest.approx(start["test_bleu"])  # round 0 is the pre-trained model
    own = summary["own_text_bleu"]
    assert len(own["initial"]) == len(own["final"]) == len(own["personal"]) == 3
    assert "BLEU on each client's held-out pairs" in result.stdout and "; personal " in result.stdout
    table = write_report([out], tmp_path / "report")["markdown"]
    assert "own-text BLEU before (min/median/max)" in table and min_median_max_bleu(own["final"]) in table
    assert "after personal steps" in table and min_median_max_bleu(own["personal"]) in table
    _, final = read_deployed_tensors((out / "checkpoint" / "model.fedq").read_bytes())
    _, base = read_deployed_tensors(read_checkpoint(checkpoint).deployed_path.read_bytes())
    assert all(np.array_equal(final[n].codes, t.codes) for n, t in base.items() if hasattr(t, "codes"))
    assert any(n.endswith("lora_b") and np.abs(t).max() > 0 for n, t in final.items())
    # a run from this checkpoint continues its adapters; one without adapters cannot take them
    again = compose_config([o for o in run[:-1] if not o.startswith("init_from=")] + [f"init_from={out / 'checkpoint'}"])
    model = build_model(again, load_task(again).tokenizer, again.init_from)
    assert all(np.array_equal(model.state_dict()[n].numpy(), t) for n, t in final.items() if n.endswith("lora_b"))
    without = compose_config([o for o in run[:-1] if not o.startswith(("init_from=", "adapter."))] + [f"init_from={out / 'checkpoint'}"])
    with pytest.raises(ValueError, match="holds adapters of another rank"):
        build_model(without, load_task(without).tokenizer, without.init_from)
