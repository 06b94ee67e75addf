"""gdm.accel: torch.compile (inductor) computes what the eager code computes; a clear fallback without a
compiler. Compiling costs tens of seconds on 2 cores, so the compiled tests (marked slow, still run in CI)
share one tiny one-level UNet and classifier; inductor's on-disk caches make the repeats cheap."""

import numpy as np
import pytest
import torch

from gdm import accel
from gdm.config import validate
from gdm.io import load_checkpoint
from gdm.models import load_model
from gdm.sampling import _sample_batch, compiled_for_sampling
from gdm.train.classifier import train_classifier
from gdm.train.diffusion import train_diffusion
from tests.helpers import Interrupt, tiny_config

ONE_LEVEL = {"channel_mult": [1], "attention_resolutions": [8], "num_res_blocks": 1}
TWO_LEVELS = {"channel_mult": [1, 2], "attention_resolutions": [4], "num_res_blocks": 1}  # + down/upsampling


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from gdm.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("digits")
    return prepare_dataset(tiny_config(root).data)


def test_compile_none_is_the_function_itself():
    def f(x):
        return x + 1

    assert accel.compile_fn(f, "none", "cpu", key="train.compile") is f
    with pytest.raises(ValueError, match="train.compile: unknown compile mode 'fast'"):
        accel.compile_fn(f, "fast", "cpu", key="train.compile")


def test_without_a_compiler_the_run_is_eager_and_says_so_once(monkeypatch):
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    monkeypatch.setattr(accel, "_warned", set())
    accel.compile_problem.cache_clear()
    try:
        warnings = []

        def f(x):
            return x * 2

        for _ in range(2):
            assert accel.compile_fn(f, "default", "cpu", key="sample.compile", warn=warnings.append) is f
        assert len(warnings) == 1
        assert "sample.compile=default" in warnings[0] and "no C++ compiler" in warnings[0]
        assert "running eagerly" in warnings[0]
    finally:
        accel.compile_problem.cache_clear()


def test_standard_layout_gives_row_major_strides_and_copies_only_when_needed():
    nhwc = torch.arange(2 * 8 * 8 * 1.0).reshape(2, 8, 8, 1).permute(0, 3, 1, 2)  # the reader's batches
    assert nhwc.is_contiguous() and nhwc.stride() == (64, 1, 8, 1)  # C = 1: "contiguous", NHWC strides
    std = accel.standard_layout(nhwc)
    assert std.stride() == (64, 64, 8, 1) and torch.equal(std, nhwc)
    rgb = torch.randn(2, 4, 4, 3).permute(0, 3, 1, 2)
    assert accel.standard_layout(rgb).stride() == (48, 16, 4, 1) and torch.equal(accel.standard_layout(rgb), rgb)
    assert accel.standard_layout(std) is std


def test_compile_keys_validate_and_read_yaml_booleans():
    cfg = validate({"train": {"compile": True}, "sample": {"compile": False}, "upsampler_train": {"compile": "max-autotune"}})
    assert (cfg.train.compile, cfg.sample.compile, cfg.upsampler_train.compile) == ("default", "none", "max-autotune")
    with pytest.raises(Exception, match="train.compile"):
        validate({"train": {"compile": "fastest"}})


def _metrics(run_dir):
    import csv

    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_compiled_loss_and_gradients_match_eager(digits_dir):
    """The compiled network + hybrid loss (what train.compile compiles) against eager: loss terms and every
    parameter gradient, dropout on (compiled random ops draw from torch's generator, as eager does)."""
    from gdm.data.reader import StepReader
    from gdm.diffusion import build_schedule, training_losses
    from gdm.nn import UNet

    cfg = tiny_config(digits_dir, unet={**ONE_LEVEL, "dropout": 0.1})
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, **{k: v for k, v in cfg.unet.model_dump().items()})
    for p in model.parameters():  # no zero-initialised layer: every gradient is non-trivial
        torch.nn.init.normal_(p, std=0.05)
    schedule = build_schedule("cosine", cfg.diffusion.diffusion_steps)
    x0, y = StepReader(str(digits_dir), "train", batch_size=16, seed=0).batch(0)
    x0 = accel.standard_layout(x0)  # as the trainer feeds it (the reader's NHWC strides would reorder dropout masks)
    g = torch.Generator().manual_seed(1)
    t, noise = torch.randint(0, 50, (16,), generator=g), torch.randn(x0.shape, generator=g)

    def losses(xb, tb, nb, yb):
        return training_losses(schedule, lambda xt, tt: model(xt, tt, yb), xb, tb, noise=nb,
                               loss_type="hybrid", learn_sigma=True)

    results = []
    for fn in (losses, accel.compile_fn(losses, "default", "cpu", key="train.compile")):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # dropout
        terms = fn(x0, t, noise, y)
        terms["loss"].mean().backward()
        results.append(({k: v.detach() for k, v in terms.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (te, ge), (tc, gc) = results
    for k in te:
        torch.testing.assert_close(tc[k], te[k], rtol=1e-4, atol=1e-6)
    # Tolerance relative to the largest gradient of the model: a conv bias right before a one-channel-per-group
    # GroupNorm has a gradient that is exactly 0 in exact arithmetic, so both sides hold rounding noise (~1e-10)
    # there and a per-tensor relative test would compare noise with noise. Measured: worst |diff| ~5e-7 x scale.
    scale = max(float(g.abs().max()) for g in ge.values())
    for n, grad in ge.items():
        torch.testing.assert_close(gc[n], grad, rtol=1e-3, atol=1e-5 * scale, msg=n)


def test_traced_two_level_unet_matches_eager():
    """What torch.compile traces of a two-resolution UNet (down/upsampling, the upsample in its traced form)
    run by AOT autograd without inductor (backend "aot_eager": no C++ build, seconds): the output and
    every parameter gradient equal eager's to float32 rounding. Inductor's kernels on the same graph
    are the one-level tests' business (a second inductor build would cost ~30 s of CI)."""
    from gdm.nn import UNet

    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, model_channels=32, num_classes=10, learn_sigma=True, **TWO_LEVELS)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 3, 5, 9])
    results = []
    for fn in (model, torch.compile(model, backend="aot_eager", fullgraph=True)):
        model.zero_grad(set_to_none=True)
        out = fn(x, t, y)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (oe, ge), (oc, gc) = results
    torch.testing.assert_close(oc, oe, rtol=1e-5, atol=1e-6)
    scale = max(float(v.abs().max()) for v in ge.values())
    for n, grad in ge.items():
        torch.testing.assert_close(gc[n], grad, rtol=1e-4, atol=1e-6 * scale, msg=n)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_resumes_exactly(tmp_path, digits_dir):
    """Trainer wiring: the same per-step losses and gradient norms as eager (weights are not compared: at
    AdamW's first steps an update is lr * sign(g), so rounding can flip the sign of near-zero gradients),
    and an interrupted compiled run resumes bit for bit."""
    cfg = tiny_config(tmp_path, unet={**ONE_LEVEL, "dropout": 0.1},
                      train={"steps": 4, "checkpoint_every": 2, "batch_size": 16})
    train_diffusion(cfg, digits_dir, tmp_path / "eager")
    compiled_cfg = cfg.with_overrides({"train.compile": "default"})
    torch._dynamo.reset()  # each compiled run starts as in a new process (see the resume below)
    full = train_diffusion(compiled_cfg, digits_dir, tmp_path / "full")
    eager_rows, compiled_rows = _metrics(tmp_path / "eager"), _metrics(tmp_path / "full")
    assert [r["step"] for r in compiled_rows] == [1, 2, 3, 4]
    assert compiled_rows[0]["grad_norm"] == pytest.approx(eager_rows[0]["grad_norm"], rel=1e-4)
    for e, c in zip(eager_rows, compiled_rows, strict=True):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-5), c["step"]  # measured: ~1e-7 relative
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(compiled_cfg, digits_dir, tmp_path / "part", progress=Interrupt(3))
    # A resume runs in a new process (after a kill or crash), so it starts with no compiled code: reset
    # dynamo as a new process would. Without the resets, runs compiled after other compilations in the
    # same process (here or in the previous test) were measured to differ by ~1e-8 in the weights with
    # dropout on; full and resumed runs in fresh processes (checked by hand) are bit for bit.
    torch._dynamo.reset()
    resumed = train_diffusion(compiled_cfg, digits_dir, tmp_path / "part")
    assert resumed["resumed_from"] == 2
    wc, wr = load_checkpoint(full["model"]), load_checkpoint(resumed["model"])
    for k in wc["model"]:
        assert torch.equal(wc["model"][k], wr["model"][k]), k
    assert resumed["loss"] == full["loss"]


@pytest.mark.slow
def test_compiled_guided_sampling_matches_eager(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path, unet=ONE_LEVEL, classifier=ONE_LEVEL, train={"steps": 2},
                      classifier_train={"steps": 2, "eval_every": 2})
    unet, _ = load_model(train_diffusion(cfg, digits_dir, tmp_path / "unet")["model"])
    clf, _ = load_model(train_classifier(cfg, digits_dir, tmp_path / "clf")["model"])
    y = torch.tensor([3, 1, 4, 1])
    idx = np.arange(4)
    from gdm.diffusion import build_schedule

    schedule = build_schedule("cosine", cfg.diffusion.diffusion_steps, "5")
    for sampler in ("ddim", "dpmpp2m"):
        sc = cfg.sample.model_copy(update={"sampler": sampler})
        plain = _sample_batch(unet, clf, schedule, sc, 2.0, idx, y, (1, 8, 8), "cpu")
        m, c = compiled_for_sampling(unet, clf, "default", "cpu")
        assert m is not unet and m.num_classes == unet.num_classes  # attributes read through
        fast = _sample_batch(m, c, schedule, sc, 2.0, idx, y, (1, 8, 8), "cpu")
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
        assert not torch.equal(plain, _sample_batch(unet, None, schedule, sc, 0.0, idx, y, (1, 8, 8), "cpu"))


def test_sampling_asks_no_weight_gradients():
    """Guidance differentiates the classifier w.r.t. x_t only; a compiled backward graph would otherwise
    compute every weight gradient too (compiled_for_sampling switches them off for both networks)."""
    from gdm.nn import EncoderUNet, UNet

    unet = UNet(image_size=8, in_channels=1, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                attention_resolutions=(), num_classes=10)
    clf = EncoderUNet(image_size=8, in_channels=1, model_channels=32, out_channels=10, channel_mult=(1,),
                      num_res_blocks=1, attention_resolutions=(), num_head_channels=32)
    m, c = compiled_for_sampling(unet, clf, "none", "cpu")
    assert (m, c) == (unet, clf)
    assert not any(p.requires_grad for p in [*unet.parameters(), *clf.parameters()])
    from gdm.diffusion import classifier_guidance

    x = torch.randn(2, 1, 8, 8)
    grad = classifier_guidance(c, 1.0, torch.tensor([1, 2]))(x, torch.tensor([10, 500]))
    assert grad.shape == x.shape and grad.abs().sum() > 0  # the gradient w.r.t. x_t still flows
