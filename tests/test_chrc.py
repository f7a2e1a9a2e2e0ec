"""The error memory and the CHRC corrector against hand computations and brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hmem.chrc import CHRC, ErrorMemory, horizon_weights, soft_gate
from hmem.config import ChrcConfig, HorizonMaskConfig, MemoryConfig, SoftGateConfig


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _filled(cfg: MemoryConfig, n: int, dim=8, value_dim=6, seed=0):
    memory = ErrorMemory(cfg, dim, value_dim)
    keys = _unit(n, dim, seed=seed)
    values = torch.randn(n, value_dim, generator=torch.Generator().manual_seed(seed + 1))
    for key, value in zip(keys, values):
        memory.write(key, value)
    return memory, keys, values


def test_retrieval_equals_brute_force_top_k_with_age_decay():
    cfg = MemoryConfig(capacity=50, min_entries=5, age_decay=0.97)
    memory, keys, values = _filled(cfg, 30)
    query = _unit(8, seed=7)
    found = memory.search(query, 5)
    ages = torch.arange(29, -1, -1, dtype=torch.float32)  # entry i was written 29 - i writes ago
    expected = (keys @ query) * 0.97**ages
    top, slots = expected.topk(5)
    assert found.slots.tolist() == slots.tolist()
    assert torch.allclose(found.similarities, top, atol=1e-6)
    assert torch.equal(found.values, values[slots])
    assert memory.access[slots].tolist() == [1.0] * 5 and memory.access.sum() == 5


def test_min_entries_capacity_and_clear():
    cfg = MemoryConfig(capacity=6, min_entries=4)
    memory, _, _ = _filled(cfg, 3)
    assert not memory.ready
    memory.write(_unit(8, seed=3), torch.zeros(6))
    assert memory.ready and memory.size == 4
    for i in range(10):
        memory.write(_unit(8, seed=10 + i), torch.ones(6))
    assert memory.size == 6 and memory.writes == 14  # never beyond capacity
    assert torch.isfinite(memory.scores(_unit(8))[0]).all()  # every slot in use
    memory.clear()
    assert memory.size == 0 and not memory.ready and memory.writes == 0
    assert torch.isinf(memory.scores(_unit(8))[0]).all()  # empty slots never retrieved


@pytest.mark.parametrize("weights, expected_slot", [
    ((0.0, 1.0, 0.0), 0),  # recency only: the oldest entry goes
    ((1.0, 0.0, 0.0), 3),  # importance only: the smallest mean |error| goes
    ((0.0, 0.0, 1.0), 2),  # access only: the least retrieved goes
])
def test_eviction_replaces_the_lowest_scoring_entry(weights, expected_slot):
    importance, recency, access = weights
    cfg = MemoryConfig(capacity=5, min_entries=1, evict_importance=importance,
                       evict_recency=recency, evict_access=access)
    memory = ErrorMemory(cfg, 4, 3)
    scales = [3.0, 2.0, 5.0, 0.5, 4.0]
    keys = _unit(5, 4, seed=1)
    for key, scale in zip(keys, scales):
        memory.write(key, torch.full((3,), scale))
    for slot in (0, 1, 3, 4):  # everyone but slot 2 is retrieved at least once
        memory.access[slot] += 1 + slot
    memory.write(_unit(4, seed=99), torch.full((3,), 9.0))
    assert memory.values[expected_slot].tolist() == [9.0] * 3
    assert memory.written_at[expected_slot] == 5 and memory.access[expected_slot] == 0
    assert memory.decay[expected_slot] == 1.0


def test_eviction_combines_normalised_terms():
    cfg = MemoryConfig(capacity=4, min_entries=1)
    memory = ErrorMemory(cfg, 4, 2)
    for i, scale in enumerate([1.0, 4.0, 2.0, 3.0]):
        memory.write(_unit(4, seed=i), torch.full((2,), scale))
    memory.access[:] = torch.tensor([5.0, 0.0, 1.0, 0.0])

    def norm(x):
        return (x - x.min()) / (x.max() - x.min())

    score = (0.4 * norm(torch.tensor([1.0, 4.0, 2.0, 3.0])) + 0.4 * norm(torch.arange(4.0))
             + 0.2 * norm(torch.tensor([5.0, 0.0, 1.0, 0.0])))
    memory.write(_unit(4, seed=50), torch.zeros(2))
    assert memory.values[int(score.argmin())].tolist() == [0.0, 0.0]


def test_soft_gate_and_horizon_mask_values():
    gate = SoftGateConfig(threshold=0.5, steepness=10)
    assert soft_gate(gate, torch.tensor(0.5)) == 0.5
    assert math.isclose(float(soft_gate(gate, torch.tensor(0.7))), 1 / (1 + math.exp(-2)),
                        rel_tol=1e-6)
    w = horizon_weights(HorizonMaskConfig(mode="exp", decay=0.98, floor=0.2), 96)
    assert w[0] == 1 and math.isclose(float(w[10]), 0.98**10, rel_tol=1e-6)
    first_floor = math.ceil(math.log(0.2) / math.log(0.98))  # 0.98**80 < 0.2
    assert w[first_floor - 1] > 0.2 and (w[first_floor:] == 0.2).all()
    lin = horizon_weights(HorizonMaskConfig(mode="linear", floor=0.2), 5)
    assert torch.allclose(lin, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))
    assert horizon_weights(HorizonMaskConfig(mode="off"), 96) is None


def _chrc(**overrides) -> CHRC:
    torch.manual_seed(0)
    cfg = ChrcConfig(feature_dim=8, hidden_dim=16, refiner_dim=16, gate_dim=4,
                     memory=MemoryConfig(capacity=20, min_entries=5), **overrides)
    return CHRC(cfg, n_vars=3, horizon=4)


def test_correction_is_gate_times_mask_times_retrieved_error_at_start():
    module = _chrc()
    error = torch.randn(12)
    query = module.encode(torch.randn(2, 3))
    for _ in range(6):  # the same error under the query's own key: every top-k hit is it
        module.memory.write(query.detach(), error)
    base = torch.randn(4, 3)
    correction = module.correct(query, base)
    mask = horizon_weights(module.cfg.horizon_mask, 4)[:, None]
    # the refiner starts as the identity, so the correction is the aggregate: the error itself
    assert torch.allclose(correction.delta, correction.gate * mask * error.view(4, 3), atol=1e-6)
    assert 0 < correction.gate.item() < 1


def test_switches_that_are_off_build_nothing():
    plain = _chrc(horizon_mask=HorizonMaskConfig(mode="off"), soft_gate=SoftGateConfig(enabled=False))
    assert plain.mask is None
    query = plain.encode(torch.randn(2, 3))
    for i in range(6):
        plain.memory.write(_unit(8, seed=i), torch.randn(12))
    with_gate = _chrc(horizon_mask=HorizonMaskConfig(mode="off"))
    with_gate.load_state_dict(plain.state_dict())
    with_gate.memory.load_state_dict(plain.memory.state_dict())
    a = plain.correct(query, torch.zeros(4, 3))
    b = with_gate.correct(query, torch.zeros(4, 3))
    top = plain.memory.scores(query)[0].max()
    assert torch.allclose(b.gate, a.gate * soft_gate(SoftGateConfig(), top), atol=1e-6)


def test_weighted_mean_aggregation():
    module = _chrc(retrieval={"top_k": 3, "aggregation": "weighted_mean"})
    sims = torch.tensor([0.5, 0.25, -0.1])
    errors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    assert torch.allclose(module.aggregate(sims, errors), torch.tensor([2 / 3, 1 / 3]))
    soft = _chrc()
    weights = torch.softmax(sims / 0.1, dim=0)
    assert torch.allclose(soft.aggregate(sims, errors), weights @ errors)


def test_memory_state_survives_state_dict_round_trip():
    memory, _, _ = _filled(MemoryConfig(capacity=10, min_entries=2), 7)
    clone = ErrorMemory(memory.cfg, 8, 6)
    clone.load_state_dict(memory.state_dict())
    assert clone.size == 7 and clone.writes == 7
    query = _unit(8, seed=5)
    assert torch.equal(clone.search(query, 2).slots, memory.search(query, 2).slots)


@pytest.mark.parametrize("importance", [0.4, 5.0])  # 5.0: recent entries get evicted too
def test_visibility_is_decided_on_the_host_once_certain_and_always_agrees_with_a_count(
        importance, monkeypatch):
    """The update's "enough visible entries?" must equal counting them on the device, and in the
    steady state (memory fuller than min_entries plus a horizon) it must not read the device."""
    horizon, count = 7, 4
    cfg = MemoryConfig(capacity=12, min_entries=count, evict_importance=importance)
    memory = ErrorMemory(cfg, 8, 6)
    gen = torch.Generator().manual_seed(3)
    for origin in range(60):
        latest = origin - horizon  # the update of window `origin` may see windows up to this
        assert memory.sees(latest, count) == (memory.visible(latest) >= count), origin
        memory.write(_unit(8, seed=origin), torch.randn(6, generator=gen), origin)
    counted = []
    monkeypatch.setattr(memory, "visible", lambda latest: counted.append(latest) or 0)
    assert memory.sees(60 - horizon, count) and not counted  # 12 stored, at most 6 hidden
    # a checkpoint carries what the host knows; an older one without it counts on the device
    clone = ErrorMemory(cfg, 8, 6)
    clone.load_state_dict(memory.state_dict())
    assert clone._recent == memory._recent
    state = memory.state_dict()
    state["_extra_state"] = {"size": memory.size, "writes": memory.writes}
    clone.load_state_dict(state)
    assert clone._recent is None and clone.sees(60 - horizon, count)


def test_writes_out_of_stream_order_fall_back_to_counting():
    memory = ErrorMemory(MemoryConfig(capacity=10, min_entries=2), 8, 6)
    for origin in (5, 6, 7, 1):  # window 1 written after 7: the host bound no longer holds
        memory.write(_unit(8, seed=origin), torch.zeros(6), origin)
    assert memory._recent is None
    assert memory.sees(1, 1) and not memory.sees(1, 2) and memory.sees(6, 3)
