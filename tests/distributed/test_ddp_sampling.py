"""A 2-rank `gdm sample` that fails on rank 0 ends at once with that rank's error; one process then
resumes it from the chunks the 2 ranks left and writes the npz a 2-rank run writes."""

from __future__ import annotations

import pytest

from gdm.io import read_json
from tests.distributed.conftest import run, torchrun_cmd

pytestmark = pytest.mark.distributed


def test_failed_two_rank_sampling_resumes_with_one_rank(ddp_project, two_rank_runs):
    from gdm.sampling import output_name, sample

    sc = ddp_project.cfg.sample
    unet = two_rank_runs / "unet" / "model.pt"
    out = ddp_project.root / "sample-resumed"
    name = output_name(sc, 0.0)
    (out / f"{name}.npz").mkdir(parents=True)  # rank 0 cannot write the npz: the job fails after the chunks
    res = run(torchrun_cmd("-m", "gdm", "sample", "--params", str(ddp_project.params), "--unet", str(unet),
                           "--scale", "0.0", "--out", str(out), "--quiet", launcher=("--standalone",)),
              cwd=ddp_project.root, check=False)
    assert res.returncode != 0
    assert "error (rank 1/2): stopped because rank 0 failed during assembling the samples" in res.stderr, res.stderr
    # rank 0's own error, as a refusal naming the file (gdm.errors maps IsADirectoryError)
    assert f"error (rank 0/2): output file {out / name}.npz: is a directory" in res.stderr, res.stderr
    chunks = sorted((out / f".{name}.chunks").glob("0*.npz"))
    assert len(chunks) == sc.num_samples // sc.chunk_size  # both ranks wrote theirs
    (out / f"{name}.npz").rmdir()
    chunks[1].unlink()  # and one chunk is lost too: only that one is drawn again

    again = sample(unet, out, sc, 0.0)
    meta = read_json(again.meta)
    assert meta["chunks_reused"] == len(chunks) - 1 and meta["world_size"] == 1
    assert again.npz.read_bytes() == (two_rank_runs / "samples-0.0" / f"{name}.npz").read_bytes()
