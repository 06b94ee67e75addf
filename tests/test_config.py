import pytest
import yaml

from gdm.config import Config, load_config, parse_override, validate
from gdm.errors import ConfigError


def write(tmp_path, data):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_repo_params_yaml_is_valid():
    cfg = load_config("params.yaml")
    assert cfg.data.source == "digits"


def test_defaults_round_trip_through_flat_names():
    cfg = Config()
    flat = cfg.flat()
    assert flat["unet.model_channels"] == cfg.unet.model_channels
    assert flat["train.ema_rates"] == list(cfg.train.ema_rates)
    assert "pipeline.models" in flat  # nested dicts below a section stay one param


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"unet": {"bogus": 1}}, ["unet.bogus", "unknown key", "model_channels"]),
        ({"bogus": {}}, ["bogus", "unknown key"]),
        ({"unet": {"model_channels": "wide"}}, ["unet.model_channels", "'wide'"]),
        ({"unet": {"model_channels": -4}}, ["unet.model_channels", "greater than", "-4"]),
        ({"unet": {"channel_mult": [1, -2]}}, ["unet.channel_mult", "positive"]),
        ({"unet": {"attention_resolutions": [3]}}, ["unet.attention_resolutions", "3", "allowed: [8, 4]"]),
        ({"classifier": {"attention_resolutions": [16]}}, ["classifier.attention_resolutions", "16"]),
        ({"unet": {"model_channels": 48}}, ["GroupNorm", "48"]),
        ({"unet": {"num_head_channels": 0}}, ["unet.num_head_channels", "-1"]),
        ({"data": {"source": "mnist"}}, ["data.source", "'mnist'", "digits"]),
        ({"data": {"source": "cifar10"}}, ["data.path is required"]),
        ({"data": {"resolution": 2}}, ["data.resolution", "4"]),
        ({"train": {"ema_rates": [1.5]}}, ["train.ema_rates", "(0, 1)"]),
        ({"train": {"microbatch": 128, "batch_size": 64}}, ["train.microbatch", "128", "64"]),
        ({"sample": {"labels": "some"}}, ["sample.labels", "balanced"]),
        ({"sample": {"scales": [-1.0]}}, ["sample.scales", "non-negative"]),
        ({"sample": {"scales": [0, 2]}}, ["sample.scales", "as floats", "[0.0, 2.0]"]),
        ({"pipeline": {"ablations": {}}}, ["pipeline.baseline", "declare at least the baseline"]),
        ({"pipeline": {"models": {"classifier": {}}}}, ["classifier", "A-Za-z0-9"]),
        ({"diffusion": {"loss_type": "hybrid"}, "unet": {"learn_sigma": False}}, ["hybrid", "learn_sigma"]),
        ({"diffusion": {"noise_schedule": "sqrt"}}, ["diffusion.noise_schedule", "'sqrt'"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw, fragments):
    with pytest.raises(ConfigError) as exc:
        validate(raw, origin="params.yaml")
    msg = str(exc.value)
    assert msg.startswith("params.yaml")
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_overrides_parse_yaml_values():
    assert parse_override("unet.attention_resolutions=[4, 8]") == ("unet.attention_resolutions", [4, 8])
    assert parse_override("unet.num_classes=null") == ("unet.num_classes", None)
    assert parse_override("train.lr=1e-3")[1] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("unet.model_channels")


def test_overrides_are_validated_like_the_file(tmp_path):
    p = write(tmp_path, {"unet": {"model_channels": 64}})
    cfg = load_config(p, ["unet.num_res_blocks=2", "sample.scales=[0.0, 1.0, 2.0]"])
    assert cfg.unet.model_channels == 64 and cfg.unet.num_res_blocks == 2
    assert cfg.sample.scales == (0.0, 1.0, 2.0)
    with pytest.raises(ConfigError, match="unknown key 'unet.widht'"):
        load_config(p, ["unet.widht=3"])
    with pytest.raises(ConfigError, match="unknown section 'unnet'"):
        load_config(p, ["unnet.model_channels=3"])
    with pytest.raises(ConfigError, match="unet.model_channels"):
        load_config(p, ["unet.model_channels=-1"])


def test_config_is_frozen():
    cfg = Config()
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.unet.model_channels = 3


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("unet: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_with_overrides_returns_validated_copy():
    cfg = Config()
    uncond = cfg.with_overrides({"unet.num_classes": None})
    assert uncond.unet.num_classes is None and cfg.unet.num_classes == 10


def test_sampler_respacing_resolves_per_sampler_once():
    cfg = validate({"sample": {"respacing": "ddim25", "sampler_respacing": {"dpmpp2m": "ddim10"}}})
    assert cfg.for_sampling() is cfg  # ddim: no entry, unchanged
    solver = cfg.with_overrides({"sample.sampler": "dpmpp2m"}).for_sampling()
    assert (solver.sample.respacing, solver.sample.sampler_respacing) == ("ddim10", {})
    assert solver.for_sampling() is solver  # resolved configs stay as they are
    with pytest.raises(ConfigError, match="sample.sampler_respacing"):
        validate({"sample": {"sampler_respacing": {"euler": "ddim10"}}})
