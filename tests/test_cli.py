"""The `gdm` entry point as a user runs it: `python -m gdm ...` in a fresh process.

Few subprocesses (each pays the imports); the commands' logic has in-process tests elsewhere.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("prepare", "train", "train-classifier", "train-upsampler", "train-evaluator", "sample", "evaluate", "report",
            "presets", "import-adm", "config", "stages")


def gdm(*args, cwd):
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gdm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory holding a copy of the repo's params.yaml (the default `--params`)."""
    d = tmp_path_factory.mktemp("cli")
    shutil.copy(REPO / "params.yaml", d / "params.yaml")
    return d


def test_help_lists_every_command(workdir):
    r = gdm("--help", cwd=workdir)
    assert r.returncode == 0, r.stderr
    listed = {line.strip(" │").split()[0] for line in r.stdout.splitlines() if line.startswith("│ ")}
    assert set(COMMANDS) <= listed, sorted(set(COMMANDS) - listed)


def test_bad_override_exits_2_naming_key_and_value_without_traceback(workdir):
    r = gdm("config", "show", "--set", "unet.model_channels=wide", cwd=workdir)
    assert r.returncode == 2
    assert "unet.model_channels" in r.stderr and "'wide'" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_params_file_exits_2_naming_it(workdir):
    missing = workdir / "nowhere" / "params.yaml"
    r = gdm("config", "show", "--params", str(missing), cwd=workdir)
    assert r.returncode == 2
    assert str(missing) in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr


def test_config_show_flat_reads_params_yaml_from_the_working_directory(workdir):
    r = gdm("config", "show", "--flat", "--set", "unet.model_channels=64", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "unet.model_channels: 64" in r.stdout.splitlines()
    assert "data.source: \"digits\"" in r.stdout.splitlines()


def test_prepare_digits_prints_the_summary(workdir):
    out_dir = workdir / "prepared"
    r = gdm("prepare", "--quiet", "--set", f"data.out_dir={out_dir}", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "1797 images" in r.stdout and "8x8x1" in r.stdout and "10 classes" in r.stdout
    assert (out_dir / "digits" / "manifest.json").is_file()
    assert (out_dir / "digits" / "grid.png").is_file()
