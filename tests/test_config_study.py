"""Config of the study's additions: classifier-free guidance (unet.class_dropout, sample.guidance,
pipeline.free_guidance) and the upsampling study (upsampler, upsampler_train, train.resolution,
pipeline.upsampling_models, pipeline.low_res_overrides)."""

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
    (["pipeline.free_guidance=[nope]"], r"pipeline.free_guidance: \['nope'\] are not in pipeline.models"),
    (["pipeline.free_guidance=[cfg, cfg]"], r"names a model twice"),
    (["sample.guidance=cfg"], r"sample.guidance: Input should be 'classifier' or 'free'"),
    (["unet.class_dropout=1.0"], r"unet.class_dropout: Input should be less than 1"),
    (["unet.class_dropout=0.1", "unet.num_classes=null", "pipeline.models={}"], r"class_dropout 0.1 needs a class"),
    (["train.resolution=16"], r"train.resolution 16 is above data.resolution 8"),
    (["upsampler.low_resolution=8"], r"upsampler.low_resolution 8 must be below the resolution it upsamples to, 8"),
    (["pipeline.upsampling_models=[nope]"], r"pipeline.upsampling_models: \['nope'\] are not in pipeline.models"),
    (["upsampler.low_resolution=2"],
     (r"model 'cond' at upsampler.low_resolution 2 .*\n.*unet.attention_resolutions: 4 is not reachable from "
      r"train.resolution 2")),
    (["pipeline.low_res_overrides={unet.nope: 1}"], r"unknown key 'unet.nope'"),
])
def test_bad_guidance_config_is_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PARAMS, overrides)


def test_low_res_config_of_a_model_and_of_the_classifier():
    cfg = load_config(PARAMS, ["pipeline.low_res_overrides={unet.attention_resolutions: [2]}"])
    low = cfg.low_res("cfg")
    assert low.train.resolution == 4 and low.classifier_train.resolution == 4
    assert low.unet.class_dropout == 0.1 and low.unet.attention_resolutions == (2,)
    clf = cfg.low_res(None)
    assert clf.classifier_train.resolution == 4 and clf.unet.class_dropout == 0.0
    assert cfg.low_resolution() == 4 and cfg.resolution("upsampler_train") == 8
    default = load_config(PARAMS, ["upsampler.low_resolution=null", "pipeline.upsampling_models=[]"])
    assert default.low_resolution() == 2  # a quarter of the large size, as ADM's 64 -> 256
