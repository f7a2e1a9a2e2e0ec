"""The plan's directions: A1 SNMA-Light, A2 query enhancement, B1 learned similarity, B3 attention
retrieval. Their maths on hand-made tensors, their validation, and runs that show each one is
really used while the control's numbers stay exactly as they were when it is off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmem.chrc import CHRC, ErrorMemory
from hmem.chrc.attention import AttentionRetrieval
from hmem.chrc.similarity import Similarity
from hmem.config import ChrcConfig, MemoryConfig, RetrievalConfig, SnmaConfig
from hmem.errors import ConfigError
from hmem.variants.snma import SNMALight

A1 = {"snma": {"enabled": True, "beta": 0.3, "memory_dim": 16}}
A2 = {"snma": {"enabled": True, "beta": 0.1, "memory_dim": 16, "enhance_query": True,
               "gamma": 0.5}}
B1_BILINEAR = {"chrc": {"retrieval": {"similarity": "bilinear"}}}
B1_MLP = {"chrc": {"retrieval": {"similarity": "mlp", "shortlist": 12}}}
B3 = {"chrc": {"retrieval": {"mode": "attention", "attention_heads": 2}}}
CONTROL = {"backbone": {"online_lr_scale": 0.1}}


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _memory(n, dim=8, value_dim=6, capacity=30, seed=0):
    memory = ErrorMemory(MemoryConfig(capacity=capacity, min_entries=1), dim, value_dim)
    keys, values = _unit(n, dim, seed=seed), torch.randn(n, value_dim)
    for key, value in zip(keys, values):
        memory.write(key, value)
    return memory, keys, values


# ----------------------------------------------------------------------------- B1


def test_bilinear_with_identity_is_cosine_and_learns_w():
    similarity = Similarity(RetrievalConfig(similarity="bilinear"), 8)
    query, keys = _unit(8, seed=1), _unit(20, 8, seed=2)
    assert torch.allclose(similarity(query, keys), keys @ query, atol=1e-6)
    memory, _, _ = _memory(20)
    found = memory.search(query, 3, similarity=similarity)
    torch.softmax(found.similarities / 0.1, 0).mul(torch.arange(3.0)).sum().backward()
    assert similarity.weight.grad is not None and similarity.weight.grad.abs().sum() > 0


def test_mlp_similarity_starts_as_cosine_and_scores_only_its_shortlist():
    cfg = RetrievalConfig(similarity="mlp", shortlist=6, top_k=3)
    similarity = Similarity(cfg, 8)
    query = _unit(8, seed=3)
    memory, keys, _ = _memory(25)
    scored = []
    similarity.net.register_forward_hook(lambda m, args, out: scored.append(args[0].shape[0]))
    found = memory.search(query, 3, similarity=similarity)
    assert scored == [6]  # the MLP saw the 6 best cosine candidates, not all 25 entries
    plain = memory.search(query, 3)
    assert found.slots.tolist() == plain.slots.tolist()  # zero-initialised: starts as cosine
    assert torch.allclose(found.similarities, plain.similarities, atol=1e-6)


# ----------------------------------------------------------------------------- B3


def test_attention_over_one_entry_returns_its_error():
    memory, _, values = _memory(1)
    attention = AttentionRetrieval(RetrievalConfig(mode="attention", attention_heads=2, top_k=1),
                                   8)
    aggregate, sims = attention(_unit(8, seed=4), memory, 1)
    assert torch.allclose(aggregate, values[0], atol=1e-6) and sims.shape == (1,)


def test_attention_weights_respect_view_window_and_empty_slots():
    memory, _, _ = _memory(12)
    memory.origin[:] = torch.arange(30)  # entry i comes from the window starting at row i
    query = _unit(8, seed=5)
    attention = AttentionRetrieval(RetrievalConfig(mode="attention", attention_heads=4), 8)
    weights = attention.weights(query, memory)
    assert torch.allclose(weights.sum(), torch.tensor(1.0)) and (weights[12:] == 0).all()
    assert (attention.weights(query, memory, latest_origin=7)[8:] == 0).all()
    windowed = AttentionRetrieval(
        RetrievalConfig(mode="attention", attention_heads=4, attention_window=5), 8)
    assert (windowed.weights(query, memory)[:7] == 0).all()  # only the last 5 writes


# ----------------------------------------------------------------------------- A1 / A2


def test_snma_gate_state_and_beta_ramp():
    torch.manual_seed(0)
    snma = SNMALight(SnmaConfig(enabled=True, beta=0.2, memory_dim=4,
                                beta_warmup_windows=10), n_vars=3, horizon=5, feature_dim=8)
    h, state = torch.randn(4), torch.randn(4)
    delta, z = snma.residual(h, state)
    gate = torch.sigmoid(snma.gate(torch.cat([h, state])))
    assert torch.allclose(z, gate * h + (1 - gate) * state) and delta.shape == (5, 3)
    assert snma.beta() == 0.0
    for window in range(5):
        snma.remember(window, torch.full((4,), float(window)))
    assert snma.beta() == pytest.approx(0.1)  # half-way through the ramp
    assert torch.equal(snma.state_at_forecast(3), torch.full((4,), 2.0))  # the state it used
    assert snma.query_shift(h) is None  # A2 off: nothing built


def test_snma_learns_only_what_chrc_leaves_unexplained():
    torch.manual_seed(0)
    chrc_output = torch.randn(5, 3, requires_grad=True)  # stands for Y_base + CHRC
    snma = SNMALight(SnmaConfig(enabled=True, memory_dim=4), n_vars=3, horizon=5, feature_dim=8)
    delta, _ = snma.residual(snma.features(torch.randn(6, 3)), torch.zeros(4))
    snma.loss(chrc_output, delta, torch.randn(5, 3), beta=0.3).backward()
    assert chrc_output.grad is None  # its objective never moves CHRC or the backbone
    assert snma.predictor[2].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("layer, message", [
    ({"snma": {"enhance_query": True}}, r"snma\.enhance_query \(A2\) takes its feature from the "
                                        r"SNMA-Light branch \(A1\): set snma\.enabled: true"),
    ({"snma": {"enabled": True, "enhance_query": True}, "chrc": {"enabled": False}},
     r"changes CHRC's query: set chrc\.enabled: true"),
    ({"chrc": {"retrieval": {"mode": "attention", "similarity": "mlp"}}},
     r"retrieval\.similarity must stay cosine \(got 'mlp'\)"),
    ({"chrc": {"retrieval": {"similarity": "mlp", "shortlist": 3}}},
     r"shortlist must be at least top_k \(shortlist=3, top_k=5\)"),
    ({"chrc": {"feature_dim": 30, "retrieval": {"mode": "attention", "attention_heads": 4}}},
     r"feature_dim must be a multiple of retrieval\.attention_heads"),
    ({"snma": {"beta": -0.1}}, r"snma\.beta: Input should be greater than or equal to 0"),
])
def test_variant_configs_are_validated(layer, message):
    from hmem.config import build_trial_config

    with pytest.raises(ConfigError, match=message):
        build_trial_config(layer)


def test_switches_off_build_nothing():
    module = CHRC(ChrcConfig(feature_dim=8, hidden_dim=8, refiner_dim=8, gate_dim=4), 3, 4)
    assert module.similarity is None and module.attention is None
    names = {name.split(".")[0] for name, _ in module.named_parameters()}
    assert names == {"encoder", "refiner", "quality", "confidence"}


# ----------------------------------------------------------------------------- runs


def test_with_every_switch_off_the_control_is_bit_identical(tiny, run_online):
    control, _ = run_online(tiny(CONTROL))
    spelled_out, _ = run_online(tiny(CONTROL, {
        "snma": {"enabled": False, "enhance_query": False},
        "chrc": {"retrieval": {"similarity": "cosine", "mode": "topk"}}}))
    assert torch.equal(control.forecasts, spelled_out.forecasts)
    # built, trained, and weighted by zero: the branch leaves the control's numbers untouched
    beta_zero, _ = run_online(tiny(CONTROL, {"snma": {"enabled": True, "beta": 0.0,
                                                     "memory_dim": 16}}))
    assert torch.equal(control.forecasts, beta_zero.forecasts)
    gamma_zero, _ = run_online(tiny(CONTROL, {"snma": {"enabled": True, "beta": 0.0,
                                                      "memory_dim": 16, "enhance_query": True,
                                                      "gamma": 0.0}}))
    assert torch.equal(control.forecasts, gamma_zero.forecasts)
    assert control.metrics["mse"] == beta_zero.metrics["mse"] == gamma_zero.metrics["mse"]


@pytest.mark.parametrize("direction", [A1, A2, B1_BILINEAR, B1_MLP, B3],
                         ids=["A1", "A2", "B1-bilinear", "B1-mlp", "B3"])
def test_each_direction_changes_the_forecasts(tiny, run_online, direction):
    control, _ = run_online(tiny(CONTROL))
    variant, _ = run_online(tiny(CONTROL, direction))
    assert variant.metrics["steps"] == control.metrics["steps"]
    assert variant.metrics["mse"] != control.metrics["mse"]
    assert torch.isfinite(variant.forecasts).all()
    assert variant.metrics["trainable_parameters"] >= control.metrics["trainable_parameters"]


def test_s3_combinations_compose_through_config(tiny, run_online):
    a1_b1, _ = run_online(tiny(CONTROL, A1, B1_BILINEAR))
    a1_b3, _ = run_online(tiny(CONTROL, A1, B3))
    assert a1_b1.metrics["mse"] != a1_b3.metrics["mse"]


# ----------------------------------------------------------------------------- B2

B2 = {"chrc": {"contrastive": {"enabled": True, "epochs": 3, "batch_size": 64}}}


def test_positives_are_nearest_in_error_space_beyond_the_overlap():
    from hmem.variants.contrastive import nearest_positives

    errors = torch.tensor([[0.0], [0.1], [5.0], [0.04], [5.2], [9.0]])
    assert nearest_positives(errors, exclusion=0).tolist() == [3, 3, 4, 0, 2, 4]
    # windows at most one apart overlap: 5's nearest (4) is excluded, so 2 is its positive
    assert nearest_positives(errors, exclusion=1).tolist() == [3, 3, 4, 0, 2, 2]


def test_contrastive_encoder_learns_is_cached_and_keyed(tiny, cache_dir):
    from hmem.artefacts import load_or_pretrain
    from hmem.data import prepare
    from hmem.variants.contrastive import encoder_key, load_or_pretrain_encoder

    cfg = tiny(B2)
    data = prepare(cfg.data)
    backbone = load_or_pretrain(cfg, data, cache_dir)
    first = load_or_pretrain_encoder(cfg, data, backbone, cache_dir)
    losses = [epoch["info_nce"] for epoch in first.meta["history"]]
    assert losses[-1] < losses[0] and first.meta["pretrain_seconds"] > 0
    again = load_or_pretrain_encoder(cfg, data, backbone, cache_dir)
    assert again.loaded_from_cache and again.key == first.key
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    other = tiny(B2, {"chrc": {"contrastive": {"temperature": 0.2}}})
    assert encoder_key(other, backbone.key) != first.key
    assert encoder_key(cfg, "another-backbone") != first.key


def test_contrastive_encoder_is_frozen_online(tiny, cache_dir):
    from hmem.artefacts import load_or_pretrain
    from hmem.data import prepare
    from hmem.online.runner import OnlineRun
    from hmem.variants.contrastive import load_or_pretrain_encoder

    cfg = tiny(CONTROL, B2)
    data = prepare(cfg.data)
    backbone = load_or_pretrain(cfg, data, cache_dir)
    encoder = load_or_pretrain_encoder(cfg, data, backbone, cache_dir)
    run = OnlineRun(cfg, data, backbone, encoder=encoder.state)
    run.advance()
    for module in run.learner.bank:
        for name, tensor in module.encoder.state_dict().items():
            assert torch.equal(tensor, encoder.state[name])  # loaded, and never trained
    control = OnlineRun(tiny(CONTROL), data, load_or_pretrain(cfg, data, cache_dir))
    encoder_params = sum(t.numel() for t in encoder.state.values())
    assert (control.learner.trainable_parameters - run.learner.trainable_parameters
            == 2 * encoder_params)  # two buckets' encoders left the optimiser
    control.advance()
    assert run.result().metrics["mse"] != control.result().metrics["mse"]
    with pytest.raises(ValueError, match="chrc.contrastive is on: pass the pretrained encoder"):
        OnlineRun(cfg, data, load_or_pretrain(cfg, data, cache_dir))


def test_pretrain_encoder_command(tmp_path, capsys):
    from hmem.cli import main

    space = tmp_path / "b2.yaml"
    space.write_text("""
name: b2
base: {data: {dataset: synthetic, seq_len: 48, horizon: 12, synthetic: {rows: 1600, variables: 3}},
       backbone: {kind: nlinear}, pretrain: {epochs: 1},
       chrc: {feature_dim: 16, hidden_dim: 24}}
datasets: {synthetic: {}}
variants:
  control: {}
  b2: {chrc: {contrastive: {enabled: true, epochs: 2, batch_size: 64}}}
""")
    args = ["pretrain-encoder", str(space), "--dataset", "synthetic", "--cache-dir",
            str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ": pretrained; " in out and "pretraining took" in out and "InfoNCE" in out
    assert main(args) == 0
    assert ": loaded from cache;" in capsys.readouterr().out
    assert main([*args, "--variant", "control"]) == 2
    assert "has chrc.contrastive.enabled: true" in capsys.readouterr().err
    for variant in ("b2", "control"):
        assert main(["run", str(space), "--variant", variant, "--dataset", "synthetic",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / variant),
                     "--set", "data.max_test_windows=150"]) == 0
    import json

    b2, control = (json.loads((tmp_path / v / "metrics.json").read_text()) for v in ("b2", "control"))
    assert b2["encoder_key"] and b2["encoder_pretrain_seconds"] > 0 and control["encoder_key"] is None
    assert b2["mse"] != control["mse"]
