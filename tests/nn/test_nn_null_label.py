"""The learned null label of classifier-free guidance: one extra embedding row, index num_classes."""

import pytest
import torch
from nn_helpers import tiny_unet_kwargs

from gdm.errors import ConfigError, GdmError
from gdm.nn import UNet


def test_class_dropout_adds_one_embedding_row_for_the_null_label(randomize):
    plain = UNet(**tiny_unet_kwargs(num_classes=3))
    cfg = randomize(UNet(**tiny_unet_kwargs(num_classes=3, class_dropout=0.1)), seed=4)
    assert plain.label_emb.weight.shape[0] == 3 and plain.null_label is None
    assert cfg.label_emb.weight.shape[0] == 4 and cfg.null_label == 3
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    null, real = cfg(x, t, torch.tensor([3, 3])), cfg(x, t, torch.tensor([0, 0]))
    assert (null - real).abs().max() > 1e-4  # the null label has its own (learned) embedding
    with pytest.raises(GdmError, match=r"\[0, 4\) \(label 3 is the null label\)"):
        cfg(x, t, torch.tensor([0, 4]))
    with pytest.raises(GdmError, match=r"\[0, 3\)"):
        plain(x, t, torch.tensor([0, 3]))  # without class dropout there is no null label


def test_class_dropout_needs_labels():
    with pytest.raises(ConfigError, match="class_dropout"):
        UNet(**tiny_unet_kwargs(num_classes=None, class_dropout=0.1))
