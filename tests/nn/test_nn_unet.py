import itertools

import pytest
import torch
from nn_helpers import tiny_unet_kwargs

from gdm.errors import ConfigError, GdmError
from gdm.nn import SuperResUNet, UNet
from gdm.nn.attention import AttentionBlock
from gdm.nn.layers import Downsample, ResBlock, Upsample

# (image size, channel_mult, attention pixel resolutions)
SIZES = [(8, (1, 2), (4,)), (16, (1, 2), (16, 8)), (32, (1, 1, 2), (16,))]
KNOBS = list(itertools.product([True, False], [True, False]))  # AdaGN, BigGAN up/down


@pytest.mark.parametrize("size,mult,attn", SIZES)
@pytest.mark.parametrize("adagn,updown", KNOBS)
def test_shapes_and_zero_output_over_knob_grid(size, mult, attn, adagn, updown):
    i = SIZES.index((size, mult, attn)) + 2 * KNOBS.index((adagn, updown))
    learn_sigma, cond, order = i % 2 == 0, i % 3 == 0, ("legacy", "new")[i % 2]
    heads = {"num_heads": 2} if i % 4 < 2 else {"num_head_channels": 32}
    model = UNet(image_size=size, in_channels=3, model_channels=32, channel_mult=mult,
                 num_res_blocks=1, attention_resolutions=attn, use_scale_shift_norm=adagn,
                 resblock_updown=updown, learn_sigma=learn_sigma,
                 num_classes=10 if cond else None, attention_order=order, **heads)
    x, t = torch.randn(2, 3, size, size), torch.tensor([0, 999])
    y = torch.tensor([1, 9]) if cond else None
    out = model(x, t, y)
    assert out.shape == (2, 6 if learn_sigma else 3, size, size) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv


def test_state_dict_layout_matches_released_naming():
    kw = tiny_unet_kwargs(image_size=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                          attention_resolutions=(16, 8), num_classes=10)
    model = UNet(**kw)
    levels, nrb = 3, 2
    assert len(model.input_blocks) == 1 + levels * nrb + (levels - 1)
    assert len(model.output_blocks) == levels * (nrb + 1)
    sd = model.state_dict()
    shapes = {
        "time_embed.0.weight": (128, 32), "time_embed.2.weight": (128, 128),
        "label_emb.weight": (10, 128), "input_blocks.0.0.weight": (32, 3, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (32,), "input_blocks.1.0.in_layers.2.weight":
        (32, 32, 3, 3), "input_blocks.1.0.emb_layers.1.weight": (64, 128),
        "input_blocks.1.0.out_layers.0.weight": (32,),
        "input_blocks.1.0.out_layers.3.weight": (32, 32, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (64, 32, 1, 1),
        "input_blocks.4.1.qkv.weight": (192, 64, 1), "input_blocks.4.1.proj_out.weight":
        (64, 64, 1), "input_blocks.4.1.norm.weight": (64,),
        "middle_block.0.in_layers.0.weight": (64,), "middle_block.1.qkv.weight": (192, 64, 1),
        "middle_block.2.out_layers.3.weight": (64, 64, 3, 3),
        "output_blocks.0.0.skip_connection.weight": (64, 128, 1, 1),
        "output_blocks.2.2.in_layers.0.weight": (64,),  # BigGAN upsampler at level end
        "out.0.weight": (32,), "out.2.weight": (6, 32, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # attention only at the attended pixel resolutions (16 and 8 here, not 32)
    assert not any(isinstance(m, AttentionBlock) for m in model.input_blocks[1])
    assert isinstance(model.input_blocks[4][1], AttentionBlock)
    assert isinstance(model.input_blocks[3][0], ResBlock) and model.input_blocks[3][0].updown


def test_plain_resamplers_layout():
    model = UNet(**tiny_unet_kwargs(resblock_updown=False))
    assert isinstance(model.input_blocks[2][0], Downsample)
    assert "input_blocks.2.0.op.weight" in model.state_dict()
    assert isinstance(model.output_blocks[1][-1], Upsample)
    assert any(k.startswith("output_blocks.1.2.conv.") for k in model.state_dict())
    pooled = UNet(**tiny_unet_kwargs(resblock_updown=False, conv_resample=False))
    assert not any(".op." in k or ".conv." in k for k in pooled.state_dict())
    assert pooled(torch.randn(1, 3, 16, 16), torch.tensor([3])).shape == (1, 6, 16, 16)


def test_half_width_level_and_heads_upsample():
    model = UNet(**tiny_unet_kwargs(model_channels=64, channel_mult=(0.5, 1), num_heads=2,
                                    num_head_channels=-1, num_heads_upsample=4))
    assert model.input_blocks[0][0].out_channels == 32
    assert model.middle_block[1].num_heads == 2 and model.output_blocks[0][1].num_heads == 4
    assert model(torch.randn(1, 3, 16, 16), torch.tensor([1])).shape == (1, 6, 16, 16)


def test_labels_and_timesteps_change_the_output(randomize):
    model = randomize(UNet(**tiny_unet_kwargs(num_classes=5)))
    x = torch.randn(2, 3, 16, 16)
    base = model(x, torch.tensor([10, 10]), torch.tensor([0, 0]))
    assert (base - model(x, torch.tensor([10, 10]), torch.tensor([3, 3]))).abs().max() > 1e-3
    assert (base - model(x, torch.tensor([500, 500]), torch.tensor([0, 0]))).abs().max() > 1e-3
    # long and float timesteps are the same
    torch.testing.assert_close(model(x, torch.tensor([10.0, 10.0]), torch.tensor([0, 0])), base)


def test_label_errors():
    cond = UNet(**tiny_unet_kwargs(num_classes=4))
    uncond = UNet(**tiny_unet_kwargs())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(GdmError, match="class-conditional"):
        cond(x, t)
    with pytest.raises(GdmError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))
    with pytest.raises(GdmError, match=r"\[0, 4\)"):
        cond(x, t, torch.tensor([0, 4]))
    with pytest.raises(GdmError, match=r"\[0, 4\)"):
        cond(x, t, torch.tensor([-1, 0]))
    with pytest.raises(GdmError, match="integer"):
        cond(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(GdmError, match=r"shape \(2,\)"):
        cond(x, torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    with pytest.raises(GdmError, match=r"\[N, 3, H, W\]"):
        uncond(torch.randn(2, 1, 16, 16), t)


def test_config_errors():
    with pytest.raises(ConfigError, match="GroupNorm"):
        UNet(**tiny_unet_kwargs(model_channels=48))
    with pytest.raises(ConfigError, match=r"not feature resolutions"):
        UNet(**tiny_unet_kwargs(attention_resolutions=(2,)))
    with pytest.raises(ConfigError, match="divisible"):
        UNet(**tiny_unet_kwargs(image_size=18, channel_mult=(1, 1, 1)))
    with pytest.raises(ConfigError, match="num_head_channels"):
        UNet(**tiny_unet_kwargs(num_head_channels=24))
    with pytest.raises(TypeError):
        UNet(16, 3, 32, (1, 2), 1, (8,))  # keyword-only constructor


def test_autocast_bf16_close_to_fp32(randomize):
    model = randomize(UNet(**tiny_unet_kwargs(num_classes=3, num_heads=2, num_head_channels=-1)),
                      seed=7).eval()
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([5, 700]), torch.tensor([0, 2])
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, y)
    assert low.dtype == torch.float32  # the output head runs in x's dtype
    rel = (low - ref).norm() / ref.norm()
    assert ref.norm() > 1.0 and 0 < rel < 0.05


def test_checkpointing_gives_same_gradients(randomize):
    plain = randomize(UNet(**tiny_unet_kwargs()), seed=2)
    ckpt = UNet(**tiny_unet_kwargs(use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 9])
    plain(x, t).square().mean().backward()
    ckpt(x, t).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_superres_unet(randomize):
    kw = tiny_unet_kwargs(num_classes=2)
    kw.pop("image_size")
    model = SuperResUNet(large_size=16, small_size=8, **kw)
    assert model.input_blocks[0][0].weight.shape == (32, 6, 3, 3)
    assert model.out[2].weight.shape == (6, 32, 3, 3)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1])
    low = torch.randn(2, 3, 8, 8)
    assert model(x, t, low, y).shape == (2, 6, 16, 16)
    randomize(model)
    # the low-res image enters as its bilinear upsampling concatenated on channels
    assert (model(x, t, low, y) - model(x, t, low + 1, y)).abs().max() > 1e-3
    plain = UNet(image_size=16, **{**kw, "in_channels": 6, "learn_sigma": False})
    plain.out[2] = model.out[2]
    plain.load_state_dict(model.state_dict())
    up = torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear")
    torch.testing.assert_close(model(x, t, low, y), plain(torch.cat([x, up], 1), t, y))
    with pytest.raises(GdmError, match="low_res"):
        model(x, t, low[:, :1], y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_close_to_fp32(dtype, randomize):
    model = randomize(UNet(**tiny_unet_kwargs(num_classes=3, attention_order="new")), seed=8)
    model = model.cuda().eval()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    t, y = torch.tensor([0, 10, 500, 999], device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda")
    ref = model(x, t, y)
    with torch.autocast("cuda", dtype=dtype):
        low = model(x, t, y)
    assert low.dtype == torch.float32
    assert (low - ref).norm() / ref.norm() < 0.05
