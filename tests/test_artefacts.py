"""Pretraining happens once per key; the key follows everything the weights depend on."""

from __future__ import annotations

import json
import logging

import torch

from hmem.artefacts import backbone_key, load_or_compute_base_forecasts, load_or_pretrain
from hmem.backbones.pretrain import epoch_lr
from hmem.data import prepare


def test_second_request_loads_instead_of_training(tiny, tmp_path, caplog):
    cfg = tiny()
    data = prepare(cfg.data)
    with caplog.at_level(logging.INFO, logger="hmem.artefacts"):
        first = load_or_pretrain(cfg, data, tmp_path)
        second = load_or_pretrain(cfg, data, tmp_path)
    assert not first.loaded_from_cache and second.loaded_from_cache
    assert "not in cache, pretraining" in caplog.text and "loaded from cache" in caplog.text
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    meta = json.loads((first.directory / "meta.json").read_text())
    assert meta["key"] == first.key and meta["epochs_run"] == 2
    assert meta["data_sha256"] == data.content_hash and meta["best_val_mse"] > 0
    weights = torch.load(first.directory / "weights.pt", weights_only=True)  # plain tensors
    assert set(weights) == set(first.model.state_dict())


def test_key_changes_with_what_the_weights_depend_on(tiny):
    cfg = tiny()
    data = prepare(cfg.data)
    key = backbone_key(cfg, data)
    assert backbone_key(tiny({"pretrain": {"seed": 1}}), data) != key
    assert backbone_key(tiny({"backbone": {"kind": "itransformer"}}), data) != key
    other_data = prepare(tiny({"data": {"synthetic": {"rows": 1700}}}).data)
    assert backbone_key(cfg, other_data) != key
    longer = tiny({"data": {"seq_len": 60}})
    assert backbone_key(longer, prepare(longer.data)) != key
    # what the online phase does is not part of the key: every variant shares the backbone
    online = tiny({"backbone": {"online_lr_scale": 0.1}, "chrc": {"enabled": False}, "seed": 5})
    assert backbone_key(online, data) == key


def test_base_forecasts_are_stored_once_and_reloaded(tiny, tmp_path):
    cfg = tiny()
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, tmp_path)
    computed = load_or_compute_base_forecasts(pretrained, data)
    assert (pretrained.directory / "base_forecasts.pt").is_file()
    loaded = load_or_compute_base_forecasts(pretrained, data)
    assert torch.equal(computed.forecasts, loaded.forecasts)
    start = data.segments["test"].start
    x, marks = data.values[start : start + 48], data.marks[start : start + 48]
    with torch.no_grad():
        direct = pretrained.model(x[None], marks[None])[0]
    assert torch.allclose(loaded[start], direct, atol=1e-6)


def test_learning_rate_schedule_holds_then_halves(tiny):
    cfg = tiny({"pretrain": {"lr": 1e-3, "constant_lr_epochs": 2, "lr_decay": 0.5}})
    assert [epoch_lr(cfg, e) for e in (1, 2, 3, 4)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
