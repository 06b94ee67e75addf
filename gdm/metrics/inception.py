"""Inception-V3 features for FID / sFID / IS / precision-recall, via torch-fidelity, offline only.

torch-fidelity reproduces the 2015 TF graph (TF1 bilinear resize to 299, (x-128)/128). Its
constructor loads weights with `torch.load(weights_only=False)` or downloads them, so we never
hand it the user's file: we find `weights-inception-2015-12-05-6726825d.pth` locally (never
download), load it with weights_only=True (a file that needs pickle code is refused), and give
torch-fidelity a re-saved clean copy of the tensors in a temporary directory.

Outputs per image (ADM section 5): `pool` = pool_3 (2048), `logits_unbiased` = pool_3 @ W (1008,
no bias; IS takes its softmax), `spatial` = first 7 channels of mixed_6/conv (Mixed_6d.branch1x1
after its ReLU) at 17 x 17, flattened in TF's H, W, C order (2023).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gdm.errors import CheckpointError, GdmError
from gdm.io import load_checkpoint, sha256_file
from gdm.rng import seeded

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
)
# torch.hub convention: the name carries the first hex digits of the file's sha256.
NAME_HASH_PREFIX = "6726825d"
SPATIAL_CHANNELS = 7
EXTRACTOR_NAME = "inception-v3-compat"


def find_inception_weights(
    weights: str | os.PathLike | None = None, hub_dir: str | os.PathLike | None = None
) -> Path:
    """Locate the weights file; never downloads. `weights` may be the file or a folder holding it.

    Without `weights`, look in the torch hub cache: `<hub_dir or torch.hub.get_dir()>/checkpoints/`.
    """
    if weights is not None:
        base = Path(weights).expanduser()
        if base.is_file() or base.suffix in (".pth", ".pt"):
            candidates = [base]  # the file itself, whatever its name
        else:
            candidates = [base / WEIGHTS_FILENAME, base / "checkpoints" / WEIGHTS_FILENAME]
    else:
        hub = Path(hub_dir).expanduser() if hub_dir is not None else Path(torch.hub.get_dir())
        candidates = [hub / "checkpoints" / WEIGHTS_FILENAME, hub / WEIGHTS_FILENAME]
    for path in candidates:
        if path.is_file():
            return path
    searched = "\n  ".join(str(p) for p in candidates)
    raise GdmError(
        f"Inception weights file {WEIGHTS_FILENAME} not found (downloads are disabled). "
        f"Searched:\n  {searched}\nFetch it on a machine with internet from {WEIGHTS_URL} and "
        f"pass its path, or place it in <torch hub dir>/checkpoints/."
    )


def _clean_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)  # weights_only=True: refuses pickle payloads (CheckpointError)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: expected a flat state dict of tensors; non-tensor keys {bad[:5]}"
        )
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _build_extractor(state: dict[str, torch.Tensor], path: Path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with tempfile.TemporaryDirectory(prefix="gdm-inception-") as tmp:
        clean = Path(tmp) / WEIGHTS_FILENAME
        torch.save(state, clean)
        try:
            return FeatureExtractorInceptionV3(
                EXTRACTOR_NAME,
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(clean),
            )
        except RuntimeError as exc:  # load_state_dict: missing/unexpected keys, shape mismatch
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: not a torch-fidelity Inception-V3 state dict: {first}"
            ) from None


class InceptionFeatures:
    """Offline Inception-V3 feature extractor: `extract(images)` -> pool / logits_unbiased / spatial."""

    def __init__(self, weights_path: Path, device: str | torch.device = "cpu"):
        self.weights_path = Path(weights_path)
        self.weights_sha256 = sha256_file(self.weights_path)
        self.name = EXTRACTOR_NAME
        self.device = torch.device(device)
        self.model = _build_extractor(_clean_state_dict(self.weights_path), self.weights_path)
        self.model.to(self.device)
        self._spatial: torch.Tensor | None = None
        self.model.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    @property
    def name_hash_matches(self) -> bool:
        """True when the file's sha256 starts with the hash in the official file name."""
        return self.weights_sha256.startswith(NAME_HASH_PREFIX)

    def _keep_spatial(self, module, inputs, output):
        # mixed_6/conv: BasicConv2d output (conv-BN-ReLU), N x 192 x 17 x 17 -> first 7, NHWC.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()

    @torch.no_grad()
    def extract(
        self,
        images_uint8_nchw: np.ndarray | torch.Tensor,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Features of uint8 N x C x H x W images (C = 1 is repeated to 3), float32 arrays."""
        images = torch.as_tensor(images_uint8_nchw)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise GdmError(
                f"InceptionFeatures.extract: expected uint8 images N x C x H x W with C in {{1, 3}}, "
                f"got shape {tuple(images.shape)} dtype {images.dtype}"
            )
        n = images.shape[0]
        out: dict[str, list[np.ndarray]] = {"pool": [], "logits_unbiased": [], "spatial": []}
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size].to(self.device)
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            pool, logits = self.model(batch)
            out["pool"].append(pool.cpu().numpy())
            out["logits_unbiased"].append(logits.cpu().numpy())
            out["spatial"].append(self._spatial.cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, n), n)
        return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}


def load_inception(
    weights: str | os.PathLike | None = None,
    hub_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> InceptionFeatures:
    """Find (never download), validate and load the Inception-V3 weights."""
    return InceptionFeatures(find_inception_weights(weights, hub_dir), device=device)


def make_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a RANDOMLY initialised Inception-V3 state dict (tests and offline dry runs only)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _NoLoad(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep random init
            return None

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="gdm-inception-") as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # our own harmless file: the constructor insists on loading one
        with seeded(seed):
            model = _NoLoad(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(empty))
            for module in model.modules():  # He init keeps activations O(1) through the depth
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
