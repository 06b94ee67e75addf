"""Config of classifier-free guidance: unet.class_dropout, sample.guidance, pipeline.free_guidance."""

import pytest

from gdm.config import load_config
from gdm.errors import ConfigError

PARAMS = "params.yaml"


def test_repo_params_sweep_a_class_dropout_model():
    cfg = load_config(PARAMS)
    for name in cfg.pipeline.free_guidance:
        assert cfg.variant(name).unet.class_dropout > 0


@pytest.mark.parametrize("overrides, message", [
    (["pipeline.free_guidance=[cond]"], r"model 'cond' has unet.class_dropout 0"),
    (["pipeline.free_guidance=[nope]"], r"'nope' is not one of pipeline.models"),
    (["pipeline.free_guidance=[cfg, cfg]"], r"names a model twice"),
    (["sample.guidance=cfg"], r"sample.guidance: Input should be 'classifier' or 'free'"),
    (["unet.class_dropout=1.0"], r"unet.class_dropout: Input should be less than 1"),
    (["unet.class_dropout=0.1", "unet.num_classes=null", "pipeline.models={}"], r"class_dropout 0.1 needs a class"),
])
def test_bad_guidance_config_is_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PARAMS, overrides)
