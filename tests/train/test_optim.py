"""Mixed-precision step: dynamic loss scaling skips non-finite steps and unscales every group."""

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
