import pytest
import torch

from gdm.errors import ConfigError, GdmError
from gdm.nn import EncoderUNet
from gdm.nn.layers import GroupNorm32


def tiny_classifier(**kw):
    args = {"image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 7,
            "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (8,),
            "num_head_channels": 32}
    args.update(kw)
    return EncoderUNet(**args)


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_logit_shapes_for_each_pool(pool, randomize):
    model = tiny_classifier(pool=pool)
    assert not any(k.startswith("label_emb") for k in model.state_dict())
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 10, 999])
    logits = model(x, t)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    randomize(model)
    a = model(x, t)
    assert torch.isfinite(a).all() and (a - model(x, t.flip(0))).abs().max() > 1e-4


def test_head_layouts():
    sd = tiny_classifier(pool="attention").state_dict()
    # final resolution 16 / 2 = 8 -> 8*8 + 1 positions (mean token first), final width 64
    assert sd["out.2.positional_embedding"].shape == (64, 65)
    assert sd["out.2.qkv_proj.weight"].shape == (192, 64, 1)
    assert sd["out.2.c_proj.weight"].shape == (7, 64, 1)
    assert sd["out.0.weight"].shape == (64,)
    spatial = tiny_classifier(pool="spatial").state_dict()
    # means of conv_in (32), 1 ResBlock (32), downsampler (32), ResBlock (64), middle (64)
    assert spatial["out.0.weight"].shape == (2048, 32 + 32 + 32 + 64 + 64)
    assert spatial["out.2.weight"].shape == (7, 2048)
    v2 = tiny_classifier(pool="spatial_v2")
    assert isinstance(v2.out[1], GroupNorm32) and v2.out[3].weight.shape == (7, 2048)


def test_adaptive_head_is_zero_initialised():
    logits = tiny_classifier(pool="adaptive")(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    assert torch.equal(logits, torch.zeros(2, 7))


def test_autocast_logits_close(randomize):
    model = randomize(tiny_classifier(), seed=4).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 600])
    ref = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t)
    assert low.dtype == torch.float32
    assert (low - ref).norm() / ref.norm() < 0.05


def test_classifier_errors():
    with pytest.raises(ConfigError, match="pool"):
        tiny_classifier(pool="max")
    with pytest.raises(ConfigError, match="num_head_channels"):
        tiny_classifier(pool="attention", num_head_channels=-1)
    with pytest.raises(GdmError, match=r"\[N, 3, H, W\]"):
        tiny_classifier()(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))
