"""Typed configuration and search spaces: every mistake is refused with the file and the dotted
key, before anything runs."""

from __future__ import annotations

import json

import pytest

from hmem.config import TrialConfig, build_trial_config, parse_set_overrides
from hmem.directions import BackboneRegime, Direction
from hmem.errors import ConfigError
from hmem.spaces import load_space

CONTROL = "search_spaces/control.yaml"


def test_defaults_are_the_designs_p2p7p8_on_a_frozen_backbone():
    cfg = TrialConfig()
    assert cfg.chrc.enabled and cfg.chrc.soft_gate.enabled and cfg.chrc.buckets.count == 4
    assert cfg.chrc.horizon_mask.mode == "exp" and cfg.chrc.retrieval.aggregation == "softmax"
    assert cfg.backbone.frozen_online and cfg.regime == "backbone=frozen chrc=on"


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"chrc": {"memory": {"capacity": 0}}}, r"chrc\.memory\.capacity: Input should be greater than or equal to 1 \(got 0\)"),
        ({"chrc": {"memroy": {}}}, r"chrc\.memroy: unknown key"),
        ({"online": {"lr": "fast"}}, r"online\.lr: Input should be a valid number.*\(got 'fast'\)"),
        ({"chrc": {"horizon_mask": {"mode": "cosine"}}}, r"chrc\.horizon_mask\.mode: Input should be 'exp', 'linear' or 'off'"),
        ({"chrc": {"retrieval": {"top_k": 20}}}, r"top_k must not exceed memory\.min_entries.*top_k=20, min_entries=10"),
        ({"backbone": {"itransformer": {"d_model": 100, "n_heads": 8}}}, r"d_model must be a multiple of n_heads"),
        ({"data": {"train_ratio": 0.7, "val_ratio": 0.4}}, r"train_ratio \+ val_ratio must be below 1"),
        ({"chrc": {"soft_gate": {"threshold": 2}}}, r"chrc\.soft_gate\.threshold: Input should be less than or equal to 1"),
    ],
)
def test_invalid_values_name_the_dotted_key(layer, message):
    with pytest.raises(ConfigError, match=message):
        build_trial_config(layer, source="test.yaml")


def test_set_overrides_parse_yaml_scalars_and_reject_bad_syntax():
    tree = parse_set_overrides(["online.lr=3e-5", "chrc.enabled=false", "data.max_test_windows=10",
                                "data.dataset=ETTm1"])
    assert tree == {"online": {"lr": "3e-5"}, "chrc": {"enabled": False},
                    "data": {"max_test_windows": 10, "dataset": "ETTm1"}}
    assert build_trial_config(tree).online.lr == 3e-5  # "3e-5" is a YAML string; it validates
    for bad in ["online.lr", "=3", "a..b=1"]:
        with pytest.raises(ConfigError, match="expected dotted.key=value"):
            parse_set_overrides([bad])
    with pytest.raises(ConfigError, match="was already given a plain value"):
        parse_set_overrides(["chrc=1", "chrc.enabled=true"])


def test_control_space_defines_the_five_variants_in_their_regimes():
    space = load_space(CONTROL)
    assert list(space.variants) == ["frozen", "online", "online_slow", "p2p7p8", "p2p7p8_frozen"]
    assert set(space.datasets) == {"ETTm1", "Weather", "synthetic"}
    regimes = {v: space.trial_config(v, "ETTm1").regime for v in space.variants}
    assert regimes == {
        "frozen": "backbone=frozen chrc=off",
        "online": "backbone=online@1e-05 chrc=off",
        "online_slow": "backbone=online@1e-06 chrc=off",
        "p2p7p8": "backbone=online@1e-06 chrc=on",
        "p2p7p8_frozen": "backbone=frozen chrc=on",
    }
    weather = space.trial_config("p2p7p8", "Weather")
    assert weather.backbone.itransformer.d_model == 512 and not weather.online.warmup
    assert space.trial_config("p2p7p8", "ETTm1").online.warmup
    cfg = space.trial_config("p2p7p8", "synthetic", seed=3, overrides={"online": {"lr": 2e-5}})
    assert cfg.seed == 3 and cfg.online.lr == 2e-5 and cfg.data.dataset == "synthetic"


def test_space_errors_name_file_and_key(tmp_path):
    def space(text):
        path = tmp_path / "space.yaml"
        path.write_text(text)
        return path

    ok = "name: s\ndatasets: {synthetic: {}}\nvariants: {a: {}}\n"
    assert load_space(space(ok)).seeds == [0]
    cases = [
        ("name: s\ndatasets: {synthetic: {}}\nvariants: {a: {chrc: {top_k: 3}}}\n",
         r"space\.yaml \(variant a, dataset synthetic\): chrc\.top_k: unknown key"),
        ("name: s\ndatasets: {synthetic: {}}\n", r"space\.yaml: variants: Field required"),
        ("name: s\ndatasets: {synthetic: {}}\nvariants: {a: {}}\nseeds: [1, 1]\n",
         r"seeds: .*distinct"),
        ("name: s\ndatasets: {}\nvariants: {a: {}}\n", r"datasets: .*at least 1 item"),
        ("name: s\ndatasets: {synthetic: {}}\nvariants: {a: {}}\nsearhc: {}\n", r"searhc: unknown key"),
        ("name: [s\n", r"not valid YAML"),
        ("- a\n- b\n", r"expected a mapping"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_space(space(text))
    with pytest.raises(ConfigError, match="no such search-space file"):
        load_space(tmp_path / "absent.yaml")
    loaded = load_space(space(ok))
    with pytest.raises(ConfigError, match="no variant 'b'; this space has a"):
        loaded.trial_config("b", "synthetic")
    with pytest.raises(ConfigError, match="dataset 'ETTm1' is not in this space's datasets"):
        loaded.trial_config("a", "ETTm1")
    assert loaded.trial_config("a", "my/file.csv").data.dataset == "my/file.csv"


def test_directions_are_read_off_the_switches_with_the_plans_stage_family_and_order():
    plan = load_space("search_spaces/plan.yaml")
    direction = {v: plan.trial_config(v, "ETTm1").direction for v in plan.variants}
    assert direction["online_slow"] is Direction.BASELINE and not Direction.BASELINE.judged
    assert direction["p2p7p8"] is direction["p2p7p8_frozen"] is Direction.CONTROL
    assert {direction[v] for v in ("a1_base", "a1_beta0.2", "a2", "b1_mlp", "b3", "b2",
                                   "a1_b3")} == {Direction.A1, Direction.A2, Direction.B1,
                                                 Direction.B3, Direction.B2, Direction.S3}
    assert [d.stage for d in Direction] == ["S0", "S0", "S1", "S1", "S2", "S2", "S2", "S3"]
    assert Direction.in_family("A") == (Direction.A1, Direction.A2)
    assert Direction.in_family("B") == (Direction.B1, Direction.B3, Direction.B2)  # plan 5.2
    assert sorted(Direction, key=lambda d: d.order)[-1] is Direction.S3
    # any two mechanisms together are a combination, including two retrieval changes
    two_b = plan.trial_config("b2", "ETTm1", overrides={"chrc": {"retrieval": {
        "similarity": "bilinear"}}})
    assert two_b.direction is Direction.S3
    # labels stay plain strings in metrics.json and the trials table
    assert json.dumps({"d": Direction.A1}) == '{"d": "A1"}' and Direction.A1 == "A1"
    assert plan.trial_config("b3_frozen", "ETTm1").backbone_regime == BackboneRegime(True, 0.0)
