import pytest

from recsys.config import ConfigError, apply_overrides, config_from_dict, load_recipe, parse_override
from tests.conftest import REPO


def test_overrides_are_typed_toml():
    assert parse_override("model.num_blocks=4") == (["model", "num_blocks"], 4)
    assert parse_override("eval.ks=[5, 10]") == (["eval", "ks"], [5, 10])
    assert parse_override("data.split=hstu") == (["data", "split"], "hstu")
    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["model.num_blocks=4", "train.lr=0.01", "eval.ks=[5, 10]"])
    assert cfg.model.num_blocks == 4 and cfg.train.lr == 0.01 and cfg.eval.ks == (5, 10)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_blockz=3", r"unknown key 'model.num_blockz'; allowed keys in \[model\]: \[.*'max_seq_len'"),
        ("loss.name=softmax", r"loss.name: 'softmax' is not allowed; allowed values: \['ce', 'sampled_softmax'"),
        ("train.lr=fast", r"train.lr: expected a number, got 'fast'"),
        ("train.epochs=1.5", r"train.epochs: expected an integer"),
        ("train.epochs=0", r"train.epochs must be >= 1"),
        ("eval.exclude_seen=1", r"eval.exclude_seen: expected true or false"),
        (
            "data.split=random",
            r"data.split: 'random' is not allowed; allowed values: \['leave_one_out', 'hstu', 'temporal'\]",
        ),
        ("eval.early_stopping_metric=ndcg@50", r"early_stopping_metric: 'ndcg@50' is not computed"),
        ("optim.lr=1", r"unknown section 'optim'"),
        ("lr=1", r"keys look like section.key"),
        ("model.name=gpt", r"model.name: \"unknown model 'gpt'|model.name: unknown model 'gpt'"),
        ("model.hidden_dim=0", r"model.hidden_dim must be >= 1"),
        ("model.num_heads=0", r"model.num_heads must be >= 1"),
        ("model.num_blocks=0", r"model.num_blocks must be >= 1"),
        ("model.ffn_dim=0", r"model.ffn_dim must be >= 1 \(or unset\)"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\)"),
        ("train.num_threads=-1", r"train.num_threads must be >= 0"),
        ("data.cold_item_fraction=1.5", r"data.cold_item_fraction must be in \[0, 1\)"),
        ("loss.ce_chunk_size=0", r"loss.ce_chunk_size must be >= 1"),
        ("train.seed=-1", r"train.seed must be in \[0, 2\*\*32\)"),
        ("train.betas=[0.9, 1.5]", r"train.betas must be two numbers in \[0, 1\)"),
        ("model.init_std=-1", r"model.init_std must be >= 0"),
        ("loss.temperature=inf", r"loss.temperature: expected a finite number, got inf"),
        ("train.weight_decay=-inf", r"train.weight_decay: expected a finite number, got -inf"),
        ("data.valid_cut=nan", r"data.valid_cut: expected a finite number, got nan"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", [override])


def test_unknown_section_in_recipe(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[trian]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load_recipe(p)
    p.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(p)
    p.write_bytes(b"\xff\xfe[train]\n")  # UTF-16, say
    with pytest.raises(ConfigError, match=r"r.toml: not UTF-8 text \(byte 0xff at offset 0\)"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="is not a file"):
        load_recipe(tmp_path)


def test_to_dict_round_trip():
    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml")
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert apply_overrides({}, ["train.seed=3"]) == {"train": {"seed": 3}}


def test_model_settings_the_encoder_refuses_are_a_config_error(tmp_path):
    from recsys.train import Trainer, prepare_data
    from tests.conftest import write_u_data

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["model.num_heads=3"])  # 64 is not divisible by 3
    cfg.data.dataset, cfg.data.path, cfg.data.reader = (
        "custom",
        str(write_u_data(tmp_path / "u.data")),
        "movielens_100k",
    )
    with pytest.raises(ConfigError, match=r"model \(sasrec\): hidden_dim \(64\) must be divisible by num_heads \(3\)"):
        Trainer(cfg, tmp_path / "run", data=prepare_data(cfg.data, verbose=False), progress=False)


@pytest.mark.parametrize(
    "recipe, override, message",
    [
        ("recipes/ml-1m/bert4rec.toml", "model.mask_prob=1.5", r"model.mask_prob must be in \(0, 1\]"),
        ("recipes/ml-1m/bert4rec.toml", "model.mask_prob=0", r"model.mask_prob must be in \(0, 1\]"),
        ("recipes/ml-1m/hstu.toml", "model.qk_dim=0", r"model.qk_dim must be >= 1 \(or unset\)"),
    ],
)
def test_model_specific_ranges(recipe, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(REPO / recipe, [override])


def _optional_keys() -> list[tuple[str, str]]:
    """(model name or "", dotted key) of every setting that may be unset, in every section and model."""
    import dataclasses
    import types
    import typing

    from recsys.config import SECTIONS
    from recsys.models.base import MODELS, resolve_model

    resolve_model("sasrec")  # the built-in models register on first use
    classes = [("", section, cls) for section, cls in SECTIONS.items()]
    classes += [(name, "model", config_cls) for name, (_, config_cls) in sorted(MODELS.items())]
    out = []
    for model, section, cls in classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            tp = hints[field.name]
            if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
                out.append((model, f"{section}.{field.name}"))
    return out


@pytest.mark.parametrize("model,key", _optional_keys())
def test_a_wrong_value_for_a_setting_that_may_be_unset_names_the_key(model, key):
    # such keys used to end in a TypeError from the type check itself
    raw = {"model": {"name": model}} if model else {}
    section, name = key.split(".")
    raw.setdefault(section, {})[name] = [[1, 2], {"a": 3}]  # a value no setting takes
    with pytest.raises(ConfigError, match=rf"{key}: expected "):
        config_from_dict(raw)
