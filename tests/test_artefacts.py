"""Pretraining happens once per key; the key follows everything the weights depend on."""

from __future__ import annotations

import json
import logging

import pytest
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


def test_the_default_schedule_is_the_references_type3(tiny):
    cfg = tiny({"pretrain": {"lr": 1e-4}})
    assert [epoch_lr(cfg, e) for e in (1, 2, 3, 4, 5)] == pytest.approx(
        [1e-4, 1e-4, 1e-4, 0.9e-4, 0.81e-4])


# ----------------------------------------------------------------------------- damaged entries


def test_a_truncated_backbone_is_moved_aside_and_pretrained_again(tiny, tmp_path, caplog):
    cfg = tiny()
    data = prepare(cfg.data)
    first = load_or_pretrain(cfg, data, tmp_path)
    meta = json.loads((first.directory / "meta.json").read_text())
    assert set(meta["sha256"]) == {"weights.pt"}
    weights = first.directory / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a full disk
    with caplog.at_level(logging.WARNING, logger="hmem.artefacts"):
        again = load_or_pretrain(cfg, data, tmp_path)
    assert not again.loaded_from_cache  # rebuilt, not loaded
    assert f"cache entry {first.directory} is damaged" in caplog.text
    damaged = [p.name for p in first.directory.parent.iterdir() if ".damaged-" in p.name]
    assert len(damaged) == 1 and damaged[0].startswith(first.key)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)  # the same weights: pretraining is deterministic
    assert load_or_pretrain(cfg, data, tmp_path).loaded_from_cache


def test_a_flipped_byte_or_a_broken_meta_is_caught_too(tiny, tmp_path):
    cfg = tiny()
    data = prepare(cfg.data)
    first = load_or_pretrain(cfg, data, tmp_path)
    weights = first.directory / "weights.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a file that still unzips, with one wrong value
    weights.write_bytes(bytes(raw))
    assert not load_or_pretrain(cfg, data, tmp_path).loaded_from_cache
    (first.directory / "meta.json").write_text('{"key": ')  # a half-written meta
    assert not load_or_pretrain(cfg, data, tmp_path).loaded_from_cache


def test_a_damaged_entry_that_cannot_be_moved_fails_in_one_sentence(tiny, tmp_path, monkeypatch):
    from hmem.artefacts import DamagedArtefact

    cfg = tiny()
    data = prepare(cfg.data)
    first = load_or_pretrain(cfg, data, tmp_path)
    (first.directory / "weights.pt").write_bytes(b"")

    def read_only(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("hmem.artefacts.os.rename", read_only)
    with pytest.raises(DamagedArtefact, match=rf"cache entry {first.directory} is damaged .* "
                                              r"cannot be moved aside \(Read-only file system\): "
                                              r"delete it, or rebuild it"):
        load_or_pretrain(cfg, data, tmp_path)


def test_damaged_base_forecasts_are_computed_again(tiny, tmp_path, caplog):
    cfg = tiny()
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, tmp_path)
    computed = load_or_compute_base_forecasts(pretrained, data)
    path = pretrained.directory / "base_forecasts.pt"
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="hmem.artefacts"):
        again = load_or_compute_base_forecasts(pretrained, data)
    assert "are damaged" in caplog.text and torch.equal(computed.forecasts, again.forecasts)


def test_a_damaged_contrastive_encoder_is_rebuilt(tiny, tmp_path):
    from hmem.variants.contrastive import load_or_pretrain_encoder

    cfg = tiny({"chrc": {"contrastive": {"enabled": True, "epochs": 1, "batch_size": 64}}})
    data = prepare(cfg.data)
    backbone = load_or_pretrain(cfg, data, tmp_path)
    first = load_or_pretrain_encoder(cfg, data, backbone, tmp_path)
    (tmp_path / "encoders" / first.key / "weights.pt").write_bytes(b"PK\x03\x04 half a zip")
    again = load_or_pretrain_encoder(cfg, data, backbone, tmp_path)
    assert not again.loaded_from_cache
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
