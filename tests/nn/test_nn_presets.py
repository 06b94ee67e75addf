import pytest
from nn_helpers import TABLE

from gdm.errors import ConfigError
from gdm.nn import PRESETS, EncoderUNet, SuperResUNet, UNet, build_preset, count_parameters
from gdm.nn.presets import default_channel_mult


def test_every_released_model_has_a_preset():
    assert set(PRESETS) == set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_parameter_count_equals_released(name):
    model = build_preset(name)
    assert next(model.parameters()).is_meta
    assert count_parameters(model) == TABLE[name] == PRESETS[name].params


def test_preset_kinds_and_details():
    assert isinstance(build_preset("adm-256"), UNet)
    assert isinstance(build_preset("adm-upsampler-64-256"), SuperResUNet)
    assert isinstance(build_preset("adm-classifier-64"), EncoderUNet)
    assert PRESETS["adm-64"].kwargs["attention_order"] == "new"
    others = [p for n, p in PRESETS.items() if n != "adm-64"]
    assert all(p.kwargs.get("attention_order", "legacy") == "legacy" for p in others)
    assert PRESETS["adm-64"].recipe["noise_schedule"] == "cosine"
    assert PRESETS["adm-512"].recipe["use_fp16"] is False
    sd = build_preset("adm-256").state_dict()
    assert sd["label_emb.weight"].shape == (1000, 1024)
    assert sd["input_blocks.0.0.weight"].shape == (256, 3, 3, 3)
    assert sd["middle_block.1.qkv.weight"].shape == (3072, 1024, 1)
    assert sd["out.2.weight"].shape == (6, 256, 3, 3)
    up = build_preset("adm-upsampler-64-256").state_dict()
    assert up["input_blocks.0.0.weight"].shape == (192, 6, 3, 3)
    clf = build_preset("adm-classifier-256").state_dict()
    assert clf["out.2.positional_embedding"].shape == (512, 65)
    assert clf["out.2.c_proj.weight"].shape == (1000, 512, 1)


def test_default_channel_mult():
    assert default_channel_mult(64) == (1, 2, 3, 4)
    assert default_channel_mult(128) == (1, 1, 2, 3, 4)
    assert default_channel_mult(256) == (1, 1, 2, 2, 4, 4)
    assert default_channel_mult(512) == (0.5, 1, 1, 2, 2, 4, 4)
    with pytest.raises(ConfigError, match="image_size=32"):
        default_channel_mult(32)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="adm-256-uncond"):
        build_preset("adm-1024")
