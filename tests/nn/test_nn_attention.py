import pytest
import torch

from gdm.errors import ConfigError
from gdm.nn.attention import AttentionBlock, AttentionPool2d, qkv_attention


def reference_attention(qkv: torch.Tensor, heads: int, order: str) -> torch.Tensor:
    """The ADM formula written out: softmax((q ch^-1/4)^T (k ch^-1/4)) v, softmax in >= fp32."""
    n, width, length = qkv.shape
    ch = width // (3 * heads)
    if order == "legacy":
        q, k, v = qkv.reshape(n * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(n * heads, ch, length) for z in qkv.chunk(3, dim=1))
    s = ch**-0.25
    w = torch.einsum("bct,bcs->bts", q * s, k * s)
    w = torch.softmax(w.to(torch.promote_types(w.dtype, torch.float32)), dim=-1).to(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(n, heads * ch, length)


@pytest.mark.parametrize("order", ["legacy", "new"])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_sdpa_equals_reference(order, heads):
    g = torch.Generator().manual_seed(heads)
    qkv = torch.randn(3, 3 * 64, 20, generator=g) * 3
    out = qkv_attention(qkv, heads, order)
    torch.testing.assert_close(out, reference_attention(qkv, heads, order), rtol=1e-5, atol=1e-5)
    q64 = qkv.double()
    torch.testing.assert_close(qkv_attention(q64, heads, order),
                               reference_attention(q64, heads, order), rtol=1e-12, atol=1e-12)


def test_orders_differ_with_several_heads_only():
    qkv = torch.randn(2, 3 * 64, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(qkv_attention(qkv, 1, "legacy"), qkv_attention(qkv, 1, "new"))
    diff = (qkv_attention(qkv, 2, "legacy") - qkv_attention(qkv, 2, "new")).abs().max()
    assert diff > 0.1


def test_block_orders_differ_for_same_weights(randomize):
    legacy = randomize(AttentionBlock(64, num_heads=2, attention_order="legacy"))
    new = AttentionBlock(64, num_heads=2, attention_order="new")
    new.load_state_dict(legacy.state_dict())  # identical shapes: loads silently
    x = torch.randn(2, 64, 4, 4)
    assert (legacy(x) - new(x)).abs().max() > 1e-2


def test_autocast_softmax_statistics_in_fp32():
    g = torch.Generator().manual_seed(1)
    qkv = (torch.randn(2, 3 * 64, 64, generator=g) * 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = qkv_attention(qkv, 2, "legacy")
    assert out.dtype == torch.bfloat16
    # same bf16 inputs, attention in fp32, one rounding at the end (an all-bf16 computation
    # of this case is off by ~1.2; one-ulp rounding flips stay inside rtol)
    ref = reference_attention(qkv.float(), 2, "legacy").to(torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=5e-2)


def test_attention_block_layout_and_zero_init():
    block = AttentionBlock(64, num_head_channels=32)
    assert block.num_heads == 2
    sd = block.state_dict()
    assert sd["qkv.weight"].shape == (192, 64, 1) and sd["proj_out.weight"].shape == (64, 64, 1)
    assert sd["norm.weight"].shape == (64,)
    x = torch.randn(2, 64, 4, 4)
    assert torch.equal(block(x), x)  # proj_out zero-initialised: residual only


def test_attention_block_matches_reference(randomize):
    block = randomize(AttentionBlock(64, num_heads=4, attention_order="new"), seed=5)
    x = torch.randn(2, 64, 4, 4)
    flat = x.reshape(2, 64, 16)
    h = reference_attention(block.qkv(block.norm(flat)), 4, "new")
    torch.testing.assert_close(block(x), (flat + block.proj_out(h)).reshape(x.shape))


def test_bad_heads_and_order():
    with pytest.raises(ConfigError, match="num_head_channels=48"):
        AttentionBlock(64, num_head_channels=48)
    with pytest.raises(ConfigError, match="num_heads=3"):
        AttentionBlock(64, num_heads=3)
    with pytest.raises(ConfigError, match="attention_order"):
        AttentionBlock(64, attention_order="fancy")


def test_attention_pool_names_and_shapes():
    pool = AttentionPool2d(4, 64, 32, 10)
    sd = pool.state_dict()
    assert sd["positional_embedding"].shape == (64, 17)
    assert sd["qkv_proj.weight"].shape == (192, 64, 1) and sd["c_proj.weight"].shape == (10, 64, 1)
    assert pool(torch.randn(3, 64, 4, 4)).shape == (3, 10)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_qkv_reach_sdpa_contiguous_so_fused_kernels_qualify(order):
    """Fused SDPA kernels (CPU flash here; flash/mem-efficient/cuDNN on CUDA) need stride(-1) == 1:
    from CPU_CONTIGUOUS_MIN_LENGTH positions on, attention runs with only the flash backend allowed
    (the math fallback off) and still equals the formula."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gdm.nn.attention import CPU_CONTIGUOUS_MIN_LENGTH, split_qkv

    length = CPU_CONTIGUOUS_MIN_LENGTH
    qkv = torch.randn(2, 3 * 2 * 32, length, generator=torch.Generator().manual_seed(3))
    q, k, v = split_qkv(qkv, 2, order)
    assert all(t.shape == (2, 2, length, 32) and t.is_contiguous() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = qkv_attention(qkv, 2, order)
    torch.testing.assert_close(out, reference_attention(qkv, 2, order), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_split_layouts_hold_the_same_values(order):
    """Below the threshold a CPU keeps transposed views; both layouts are the same q, k, v."""
    from gdm.nn.attention import split_qkv

    qkv = torch.randn(2, 3 * 2 * 8, 16, generator=torch.Generator().manual_seed(4))
    views = split_qkv(qkv, 2, order)
    assert all(t.stride(-1) == 16 for t in views)
    for a, b in zip(views, split_qkv(qkv, 2, order, contiguous=True)):
        assert b.is_contiguous() and torch.equal(a, b)


def test_fused_path_is_batch_invariant():
    """Sample i's attention is the same whatever else is in the batch (per-sample seeding relies on
    it): bit for bit, on the contiguous (fused-kernel) path."""
    from gdm.nn.attention import CPU_CONTIGUOUS_MIN_LENGTH

    qkv = torch.randn(5, 3 * 2 * 32, CPU_CONTIGUOUS_MIN_LENGTH, generator=torch.Generator().manual_seed(5))
    full = qkv_attention(qkv, 2)
    assert torch.equal(full, torch.cat([qkv_attention(qkv[i:i + 1], 2) for i in range(5)]))
    assert torch.equal(full, torch.cat([qkv_attention(qkv[:2], 2), qkv_attention(qkv[2:], 2)]))
