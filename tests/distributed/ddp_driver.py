"""Run under torchrun by tests/distributed: the stage functions of one tiny project on N ranks.

    torchrun --nproc-per-node 2 ... tests/distributed/ddp_driver.py PARAMS OUT

OUT/unet (diffusion UNet), OUT/clf (noisy classifier), OUT/samples-0.0 and OUT/samples-2.0
(unguided and classifier-guided samples of that UNet).
"""

import sys
from pathlib import Path

from gdm import stages
from gdm.config import load_config

params, out = sys.argv[1], Path(sys.argv[2])
cfg = load_config(params)
unet = stages.train(cfg, "cond", out=out / "unet", progress=False)["model"]
clf = stages.train_classifier(cfg, out=out / "clf", progress=False)["model"]
for scale in (0.0, 2.0):
    stages.sample(cfg, "cond", scale, unet=Path(unet), classifier=Path(clf), out=out / f"samples-{scale}",
                  progress=False)
