"""Mixed-precision step: dynamic loss scaling skips non-finite steps and unscales every group."""

import pytest
import torch

from gdm.train.optim import Precision


def _two_group_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}], lr=0.1)
    return model, opt


def test_fp16_scaler_unscales_every_parameter_group_like_fp32():
    x = torch.randn(8, 4)
    ref, ref_opt = _two_group_model()
    ref(x).square().mean().backward()
    ref_opt.step()
    model, opt = _two_group_model()
    p = Precision("fp16", torch.device("cpu"))
    p.backward(model(x).square().mean())  # scaled by 2**16
    stepped, _ = p.step(opt, model.parameters(), None)
    assert stepped
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), "a group was stepped with a still-scaled gradient"


def test_fp16_scaler_skips_a_non_finite_step_and_lowers_the_scale():
    model, opt = _two_group_model()
    before = [q.detach().clone() for q in model.parameters()]
    p = Precision("fp16", torch.device("cpu"))
    scale = p.scaler.get_scale()
    p.backward(model(torch.randn(8, 4)).square().mean() * float("inf"))
    stepped, _ = p.step(opt, model.parameters(), None)
    assert not stepped and p.scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    p.backward(model(torch.randn(8, 4)).square().mean())  # the next finite step goes ahead
    assert p.step(opt, model.parameters(), None)[0]
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_gradient_clipping_bounds_the_norm():
    model, opt = _two_group_model()
    p = Precision("fp32", torch.device("cpu"))
    p.backward(model(torch.randn(8, 4) * 100).square().mean())
    _, norm = p.step(opt, model.parameters(), 0.5)
    assert norm > 0.5  # the reported norm is the pre-clip norm
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.grad) for q in model.parameters()]))
    assert float(clipped) == pytest.approx(0.5, rel=1e-5)


def test_without_clipping_the_norm_is_reported_and_gradients_are_untouched():
    model, opt = _two_group_model()
    p = Precision("fp32", torch.device("cpu"))
    p.backward(model(torch.randn(8, 4) * 100).square().mean())
    grads = [q.grad.clone() for q in model.parameters()]
    expected = sum(float(g.double().square().sum()) for g in grads) ** 0.5
    _, norm = p.step(opt, model.parameters(), None)
    assert norm == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(q.grad, g) for q, g in zip(model.parameters(), grads))


def test_fused_adamw_is_the_same_update_as_the_loop_within_fp32_rounding():
    """train.fused_optimizer: torch's fused AdamW kernel against its per-tensor loop over 20 steps of a
    small network (weight decay on, so every term of the update is exercised)."""
    from gdm.train.optim import adamw

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [adamw(n.parameters(), lr=1e-2, weight_decay=0.1, fused=f, key="train.fused_optimizer")
            for n, f in zip(nets, (False, True), strict=True)]
    assert opts[1].defaults["fused"] and not opts[0].defaults.get("fused")
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(32, 6, generator=g)
        for net, opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the state has one format: a loop optimizer resumes from a fused one's state and vice versa
    opts[0].load_state_dict(opts[1].state_dict())
    opts[1].load_state_dict(opts[0].state_dict())


def test_ema_update_is_bit_identical_to_the_per_tensor_formula():
    from gdm.train.optim import ema_update

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))  # + an int64 buffer
    ema = {k: v.clone() + 0.5 for k, v in net.state_dict().items()}
    expected = {k: (e.mul(0.99).add(v, alpha=1.0 - 0.99) if v.dtype.is_floating_point else v.clone())
                for (k, e), v in zip(ema.items(), net.state_dict().values(), strict=True)}
    net.state_dict()["1.num_batches_tracked"].fill_(7)
    expected["1.num_batches_tracked"] = torch.tensor(7)
    ema_update(ema, net, 0.99)
    for k, v in expected.items():
        assert torch.equal(ema[k], v), k


def test_fused_adamw_where_torch_has_none_names_the_key(monkeypatch):
    import pytest

    from gdm.errors import ConfigError
    from gdm.train.optim import adamw

    real = torch.optim.AdamW

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match=r"classifier_train.fused_optimizer: true, but torch has no fused AdamW "
                                          r"for cpu .*set classifier_train.fused_optimizer: false"):
        adamw(params, lr=1e-3, weight_decay=0.0, fused=True, key="classifier_train.fused_optimizer")
    assert adamw(params, lr=1e-3, weight_decay=0.0, fused=False, key="classifier_train.fused_optimizer")
