import math

import pytest
import torch
import torch.nn.functional as F

from gdm.nn.layers import (
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
    upsample_nearest2x,
)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 5, 999])
    e = timestep_embedding(t, 8)
    assert e.shape == (3, 8) and e.dtype == torch.float32
    # t = 0: cos part all ones (cos first), sin part all zeros
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # freq_i = exp(-ln(10000) * i / half): i = 1, half = 4 -> 10000**-0.25 = 0.1
    assert e[1, 1].item() == pytest.approx(math.cos(5 * 0.1), abs=1e-6)
    assert e[1, 5].item() == pytest.approx(math.sin(5 * 0.1), abs=1e-6)
    assert e[2, 0].item() == pytest.approx(math.cos(999), abs=1e-5)
    # float timesteps give the same result; odd dims get a zero column
    assert torch.equal(timestep_embedding(t.float(), 8), e)
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and torch.equal(odd[:, -1], torch.zeros(3))


def test_groupnorm32_computes_in_fp32_and_returns_input_dtype():
    gn = GroupNorm32(64)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = (torch.randn(2, 64, 4, 4) * 100 + 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gn(x)
    assert y.dtype == torch.bfloat16
    ref = F.group_norm(x.float(), 32, gn.weight, gn.bias, 1e-5).to(torch.bfloat16)
    assert torch.equal(y, ref)
    assert gn.num_groups == 32


def test_resblock_zero_init_is_identity_and_names():
    block = ResBlock(32, 128)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    assert torch.equal(block(x, emb), x)  # last conv is zero-initialised, skip is identity
    names = set(block.state_dict())
    for key in ["in_layers.0.weight", "in_layers.2.weight", "emb_layers.1.weight",
                "out_layers.0.weight", "out_layers.3.weight"]:
        assert key in names
    assert not any(k.startswith("skip_connection") for k in names)
    assert block.emb_layers[1].weight.shape == (64, 128)  # AdaGN: scale and shift
    assert ResBlock(32, 128, use_scale_shift_norm=False).emb_layers[1].weight.shape == (32, 128)
    assert ResBlock(32, 128, out_channels=64).skip_connection.weight.shape == (64, 32, 1, 1)


@pytest.mark.parametrize("adagn", [True, False])
def test_resblock_matches_paper_formula(adagn, randomize):
    block = randomize(ResBlock(32, 16, out_channels=64, use_scale_shift_norm=adagn)).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    gn_in, conv_in = block.in_layers[0], block.in_layers[2]
    gn_out, conv_out = block.out_layers[0], block.out_layers[3]
    h = conv_in(F.silu(F.group_norm(x, 32, gn_in.weight, gn_in.bias)))
    e = block.emb_layers[1](F.silu(emb))[:, :, None, None]
    if adagn:  # GN(h) * (1 + scale) + shift, scale first
        scale, shift = e[:, :64], e[:, 64:]
        h = F.group_norm(h, 32, gn_out.weight, gn_out.bias) * (1 + scale) + shift
    else:
        h = F.group_norm(h + e, 32, gn_out.weight, gn_out.bias)
    expected = block.skip_connection(x) + conv_out(F.silu(h))
    torch.testing.assert_close(block(x, emb), expected, rtol=1e-5, atol=1e-5)


def test_rescale_residual_is_exactly_one_over_sqrt2(randomize):
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    plain = randomize(ResBlock(32, 16, out_channels=64), seed=3)
    scaled = ResBlock(32, 16, out_channels=64, rescale_residual=True)
    scaled.load_state_dict(plain.state_dict())
    a, b = plain(x, emb), scaled(x, emb)
    assert a.abs().mean() > 0.1
    torch.testing.assert_close(b, a / math.sqrt(2), rtol=1e-6, atol=1e-6)


def test_biggan_resblock_resamples_h_and_skip():
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    down, up = ResBlock(32, 128, down=True), ResBlock(32, 128, up=True)
    # zero-initialised last conv: output is the resampled skip input
    assert torch.equal(down(x, emb), F.avg_pool2d(x, 2))
    assert torch.equal(up(x, emb), F.interpolate(x, scale_factor=2, mode="nearest"))
    assert set(down.state_dict()) == set(ResBlock(32, 128).state_dict())  # no resampler params


def test_plain_resamplers():
    x = torch.randn(1, 32, 8, 8)
    d = Downsample(32, use_conv=True)
    assert d.op.stride == (2, 2) and d.op.kernel_size == (3, 3) and d(x).shape == (1, 32, 4, 4)
    assert torch.equal(Downsample(32, use_conv=False)(x), F.avg_pool2d(x, 2))
    u = Upsample(32, use_conv=True)
    assert u.conv.kernel_size == (3, 3) and u(x).shape == (1, 32, 16, 16)
    assert torch.equal(Upsample(32, use_conv=False)(x), x.repeat_interleave(2, 2)
                       .repeat_interleave(2, 3))
    assert list(Downsample(32, True).state_dict()) == ["op.weight", "op.bias"]
    assert list(Upsample(32, True).state_dict()) == ["conv.weight", "conv.bias"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_traced_upsample_is_interpolate(channels_last):
    """The form torch.compile traces (a 2x2 broadcast copy) has F.interpolate's values exactly and its
    gradient (a sum of the four copies' gradients) to float32 rounding. backend="eager" runs the
    traced graph with the ops themselves, so this checks the formulation, not inductor."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    gy = torch.randn(3, 4, 10, 12, generator=g)
    eager = F.interpolate(x, scale_factor=2, mode="nearest")
    traced = torch.compile(upsample_nearest2x, backend="eager", fullgraph=True)(x)
    assert torch.equal(upsample_nearest2x(x), eager) and torch.equal(traced, eager)
    (g_eager,) = torch.autograd.grad(eager, x, gy)
    (g_traced,) = torch.autograd.grad(traced, x, gy)
    torch.testing.assert_close(g_traced, g_eager, rtol=1e-6, atol=1e-6)
    blocks = gy.reshape(3, 4, 5, 2, 6, 2).sum((3, 5))  # the closed form: each input's 2x2 block
    torch.testing.assert_close(g_traced, blocks, rtol=1e-6, atol=1e-6)


def test_checkpointing_gives_same_gradients(randomize):
    plain = randomize(ResBlock(32, 16, out_channels=64), seed=1)
    ckpt = ResBlock(32, 16, out_channels=64, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    plain(x, emb).square().sum().backward()
    ckpt(x, emb).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_dropout_only_in_training(randomize):
    block = randomize(ResBlock(32, 16, dropout=0.5), seed=2)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    block.eval()
    assert torch.equal(block(x, emb), block(x, emb))
    block.train()
    torch.manual_seed(0)
    a = block(x, emb)
    torch.manual_seed(1)
    assert not torch.equal(a, block(x, emb))
