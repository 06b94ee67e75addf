"""The bad-input cases: each makes its hostile input in a scratch folder and returns the command line
and the fragments its refusal must name (file, key, value). Registered by kind with `@case(kind)`.

Kinds: `decode` (malformed files of every format), `fs` (filesystem collisions), `value` (bad values
that used to be accepted), `debris` (refusals that used to leave files behind).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

CASES: dict[str, tuple[str, Callable]] = {}


def case(kind: str):
    def register(fn: Callable) -> Callable:
        CASES[f"{kind}-{fn.__name__.replace('_', '-')}"] = (kind, fn)
        return fn

    return register


# ------------------------------------------------------------------------------------ helpers
def params_with(w, tmp: Path, text: str | bytes | None = None, **sections) -> Path:
    """A params file: the world's, with `sections` merged in (or exactly `text`)."""
    p = tmp / "params.yaml"
    if text is not None:
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        return p
    raw = json.loads(json.dumps(w.raw))
    for sec, vals in sections.items():
        raw.setdefault(sec, {}).update(vals)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def png_bytes(size: int = 12, color: int = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares `width` x `height` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_folder(tmp: Path, names: list[bytes | str], data: bytes | None = None) -> Path:
    """A folder of small PNGs; names may be bytes (not UTF-8) and contain '/'."""
    import os

    root = tmp / "images"
    root.mkdir()
    for name in names:
        raw = name if isinstance(name, bytes) else name.encode()
        target = os.path.join(os.fsencode(root), raw)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data if data is not None else png_bytes())
    return root


def prepare_argv(w, tmp: Path, **data) -> list:
    """`gdm prepare` writing over the world's dataset name (a wrongly accepted input would replace it)."""
    return ["prepare", "-q", "--params", params_with(w, tmp, data={"name": w.dataset.name, **data})]


def copy_dataset(w, tmp: Path) -> Path:
    d = tmp / "prepared" / w.dataset.name
    shutil.copytree(w.dataset, d)
    return d


def train_on(w, tmp: Path, dataset: Path) -> list:
    return ["train", "-q", "--params", w.params, "--set", f"data.out_dir={dataset.parent}",
            "--out", tmp / "run"]


def cifar_archive(tmp: Path, batches: dict[str, dict]) -> Path:
    path = tmp / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in batches.items():
            import pickle

            data = pickle.dumps({k.encode(): v for k, v in obj.items()})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cifar_batches(n: int = 10, labels=None, count: int | None = None) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labs = list(labels) if labels is not None else [i % 10 for i in range(n)]
        out[name] = {"data": rng.integers(0, 255, (count or n, 3072), dtype=np.uint8), "labels": labs}
    return out


def npz_file(tmp: Path, name: str = "x.npz", **arrays) -> Path:
    p = tmp / name
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def evaluate_argv(w, tmp: Path, samples: Path, *more) -> list:
    return ["evaluate", "--params", w.params, "--samples", samples, "--evaluator", w.evaluator,
            "--out", tmp / "metrics.json", *more]


def checkpoint_copy(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def sample_argv(w, tmp: Path, *more) -> list:
    return ["sample", "-q", "--params", w.params, "--out", tmp / "samples", *more]


# ------------------------------------------------------------------------------------- decode
@case("decode")
def params_alias_bomb(w, tmp):
    levels = ["  - &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "bombs:\n" + "\n".join(levels) + "\nunet:\n  attention_resolutions: *l8\n"
    p = params_with(w, tmp, text)
    return ["train", "--params", p], [str(p), "alias", "unet.attention_resolutions"]


@case("decode")
def params_recursive_alias(w, tmp):
    p = params_with(w, tmp, "unet: &u\n  model_channels: 32\n  self: *u\n")
    return ["config", "show", "--params", p], [str(p), "refers to itself"]


@case("decode")
def params_not_utf8(w, tmp):
    p = params_with(w, tmp, b"unet:\n  model_channels: 32  # caf\xe9\n")
    return ["train", "--params", p], [str(p), "UTF-8", "\\xe9"]


@case("decode")
def params_not_yaml(w, tmp):
    p = params_with(w, tmp, "unet: [1, 2\ntrain: {steps: 3}\n")
    return ["train", "--params", p], [str(p), "YAML"]


@case("decode")
def params_nested_too_deep(w, tmp):
    p = params_with(w, tmp, "unet: " + "[" * 1000 + "]" * 1000 + "\n")
    return ["config", "show", "--params", p], [str(p), "nested too deeply"]


@case("decode")
def params_top_level_list(w, tmp):
    p = params_with(w, tmp, "- unet\n- train\n")
    return ["config", "show", "--params", p], [str(p), "mapping"]


@case("decode")
def params_is_a_directory(w, tmp):
    return ["train", "--params", tmp], [str(tmp), "directory"]


@case("decode")
def set_value_not_yaml(w, tmp):
    return (["train", "--params", w.params, "--set", "unet.attention_resolutions=[4,"],
            ["unet.attention_resolutions", "YAML"])


@case("decode")
def imagefolder_file_name_not_utf8(w, tmp):
    root = image_folder(tmp, ["cat/cat_1.png", b"cat/cat_\xff.png", "dog/dog_1.png"])
    return prepare_argv(w, tmp, source="imagefolder", path=str(root), resolution=8), ["\\xff", "UTF-8"]


@case("decode")
def imagefolder_folder_name_not_utf8(w, tmp):
    root = image_folder(tmp, ["cat/a.png", b"d\xfeg/b.png"])
    return prepare_argv(w, tmp, source="imagefolder", path=str(root), resolution=8), ["\\xfe", "UTF-8"]


@case("decode")
def decompression_bomb_png(w, tmp):
    root = image_folder(tmp, ["cat/a.png", "dog/bomb.png"])
    (root / "dog" / "bomb.png").write_bytes(png_header_only(20000, 20000))
    return (prepare_argv(w, tmp, source="imagefolder", path=str(root), resolution=8),
            ["bomb.png", "max_image_pixels"])


@case("decode")
def image_over_configured_pixel_limit(w, tmp):
    root = image_folder(tmp, ["cat/a.png", "dog/b.png"], data=png_bytes(size=40))
    return (prepare_argv(w, tmp, source="imagefolder", path=str(root), resolution=8, max_image_pixels=1000),
            ["a.png", "1,000", "max_image_pixels"])


@case("decode")
def truncated_parquet_shard(w, tmp):
    d = copy_dataset(w, tmp)
    shard = min(d.glob("train-*.parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return train_on(w, tmp, d), [shard.name, "Parquet"]


@case("decode")
def manifest_not_json(w, tmp):
    d = copy_dataset(w, tmp)
    (d / "manifest.json").write_text('{"format": "gdm-prepared-v1", ')
    return train_on(w, tmp, d), [str(d / "manifest.json"), "JSON"]


@case("decode")
def manifest_not_utf8(w, tmp):
    d = copy_dataset(w, tmp)
    (d / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    return train_on(w, tmp, d), [str(d / "manifest.json"), "UTF-8"]


@case("decode")
def manifest_json_list(w, tmp):
    d = copy_dataset(w, tmp)
    (d / "manifest.json").write_text("[1, 2, 3]")
    return train_on(w, tmp, d), [str(d / "manifest.json"), "format"]


@case("decode")
def manifest_lists_a_missing_shard(w, tmp):
    d = copy_dataset(w, tmp)
    shard = min(d.glob("val-*.parquet"))
    shard.unlink()
    return train_on(w, tmp, d), [shard.name, "missing"]


@case("decode")
def corrupt_png_inside_a_shard(w, tmp):
    import pyarrow.parquet as pq

    d = copy_dataset(w, tmp)
    shard = min(d.glob("train-*.parquet"))
    table = pq.read_table(shard).to_pylist()
    table[0]["image"] = b"\x89PNG\r\n\x1a\nnot really"
    import pyarrow as pa

    from gdm.data.prepare import SCHEMA

    pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), shard)
    return train_on(w, tmp, d), [str(d), "train"]


@case("decode")
def report_with_corrupt_eval_json(w, tmp):
    ev = tmp / "runs" / "eval"
    ev.mkdir(parents=True)
    (ev / "cond-ddim-0.0.json").write_text('{"fid": 1.0,')
    return (["report", "-q", "--params", w.params, "--set", f"pipeline.runs_dir={tmp / 'runs'}",
             "--set", f"pipeline.reports_dir={tmp / 'reports'}"], ["cond-ddim-0.0.json", "JSON"])


@case("decode")
def samples_npz_object_array(w, tmp):
    p = tmp / "objects.npz"
    np.savez(p, arr_0=np.array([{"x": 1}] * 6, dtype=object))
    return evaluate_argv(w, tmp, p), [str(p), "object"]


@case("decode")
def samples_npz_garbage(w, tmp):
    p = tmp / "garbage.npz"
    p.write_bytes(b"this is not a zip archive at all" * 10)
    return evaluate_argv(w, tmp, p), [str(p), "npz"]


@case("decode")
def samples_npz_truncated(w, tmp):
    p = tmp / "half.npz"
    p.write_bytes(w.samples.read_bytes()[: w.samples.stat().st_size // 2])
    return evaluate_argv(w, tmp, p), [str(p)]


@case("decode")
def samples_npy_not_npz(w, tmp):
    p = tmp / "bare.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((6, 8, 8, 1), np.uint8))
    return evaluate_argv(w, tmp, p), [str(p), ".npz"]


@case("decode")
def reference_npz_garbage(w, tmp):
    ref = tmp / "ref.npz"
    ref.write_bytes(b"PK\x03\x04 broken")
    return evaluate_argv(w, tmp, w.samples, "--reference", ref), [str(ref)]


@case("decode")
def unet_checkpoint_truncated(w, tmp):
    p = tmp / "trunc.pt"
    p.write_bytes(w.unet.read_bytes()[:5000])
    return sample_argv(w, tmp, "--unet", p), [str(p)]


@case("decode")
def unet_checkpoint_is_text(w, tmp):
    p = tmp / "model.pt"
    p.write_text("weights: none\n")
    return sample_argv(w, tmp, "--unet", p), [str(p)]


@case("decode")
def unet_checkpoint_pickle_payload(w, tmp):
    marker = tmp / "PWNED"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    p = tmp / "evil.pt"
    torch.save({"format": "x", "model": Payload()}, p)
    return sample_argv(w, tmp, "--unet", p), [str(p), "weights_only"]


@case("decode")
def evaluator_checkpoint_garbage(w, tmp):
    p = tmp / "evaluator.pt"
    p.write_bytes(b"\x00" * 100)
    return (["evaluate", "--params", w.params, "--samples", w.samples, "--evaluator", p,
             "--out", tmp / "m.json"], [str(p)])


@case("decode")
def cifar_archive_garbage(w, tmp):
    p = tmp / "cifar-10-python.tar.gz"
    p.write_bytes(b"\x1f\x8b garbage" * 50)
    return prepare_argv(w, tmp, source="cifar10", path=str(p), channels=3, resolution=8), [str(p)]


@case("decode")
def npz_source_object_array(w, tmp):
    p = tmp / "src.npz"
    np.savez(p, arr_0=np.array([None] * 4, dtype=object))
    return prepare_argv(w, tmp, source="npz", path=str(p)), [str(p), "object array"]


# ----------------------------------------------------------------------------------------- fs
@case("fs")
def train_out_is_a_file(w, tmp):
    f = tmp / "run.txt"
    f.write_text("not a directory")
    return ["train", "-q", "--params", w.params, "--out", f], [str(f), "not a directory"]


@case("fs")
def train_out_under_a_file(w, tmp):
    f = tmp / "file"
    f.write_text("x")
    return ["train", "-q", "--params", w.params, "--out", f / "run"], [str(f), "not a directory"]


@case("fs")
def import_adm_out_is_a_directory(w, tmp):
    d = tmp / "out"
    d.mkdir()
    return (["import-adm", "--params", w.params, "--preset", "adm-classifier-64", "--checkpoint", w.unet,
             "--out", d], [str(d), "directory"])


@case("fs")
def sample_out_is_a_file(w, tmp):
    f = tmp / "samples"
    f.write_text("x")
    return ["sample", "-q", "--params", w.params, "--out", f], [str(f), "not a directory"]


@case("fs")
def evaluate_out_is_a_directory(w, tmp):
    d = tmp / "metrics"
    d.mkdir()
    return (["evaluate", "--params", w.params, "--samples", w.samples, "--evaluator", w.evaluator, "--out", d],
            [str(d), "directory"])


@case("fs")
def train_evaluator_out_is_a_file(w, tmp):
    f = tmp / "ev"
    f.write_text("x")
    return ["train-evaluator", "-q", "--params", w.params, "--out", f], [str(f), "not a directory"]


@case("fs")
def prepare_out_dir_is_a_file(w, tmp):
    f = tmp / "prepared"
    f.write_text("x")
    return (["prepare", "-q", "--params", w.params, "--set", f"data.out_dir={f}"], [str(f), "not a directory"])


@case("fs")
def write_reference_is_a_directory(w, tmp):
    d = tmp / "ref"
    d.mkdir()
    return (["evaluate", "--params", w.params, "--write-reference", d, "--evaluator", w.evaluator],
            [str(d), "directory"])


# -------------------------------------------------------------------------------------- value
def _float_keys() -> list[tuple[str, bool]]:
    """Every float key of the config (and whether it is a list of floats), found from the typed config."""
    import typing

    from gdm.config import Config

    keys = []
    for section, field in Config.model_fields.items():
        for name, f in field.annotation.model_fields.items():
            ann = f.annotation
            args = typing.get_args(ann)
            if typing.get_origin(ann) is tuple and args and args[0] is float:
                keys.append((f"{section}.{name}", True))
            elif ann is float or float in args:
                keys.append((f"{section}.{name}", False))
    return keys


_COMMAND_OF = {"data": "prepare", "classifier_train": "train-classifier", "classifier": "train-classifier",
               "evaluator": "train-evaluator", "eval": "evaluate", "sample": "sample",
               "upsampler": "train-upsampler", "upsampler_train": "train-upsampler"}


def _nonfinite_case(key: str, is_list: bool, text: str):
    def make(w, tmp):
        cmd = _COMMAND_OF.get(key.split(".")[0], "train")
        value = f"[{text}]" if is_list else text
        argv = [cmd, "--params", w.params, "--set", f"{key}={value}"]
        if cmd == "evaluate":
            argv += ["--samples", w.samples, "--out", tmp / "m.json"]
        return argv, [key, "finite"]

    return make


for _key, _is_list in _float_keys():
    for _text in (".nan", "-.inf"):
        CASES[f"value-{_key}-{_text.strip('.-')}"] = ("value", _nonfinite_case(_key, _is_list, _text))


@case("value")
def params_file_lr_inf(w, tmp):
    p = params_with(w, tmp, train={"lr": float("inf")})
    return ["train", "-q", "--params", p], ["train.lr", "inf", "finite"]


@case("value")
def scale_option_nan(w, tmp):
    return sample_argv(w, tmp, "--scale", "nan"), ["sample.scales", "nan"]


@case("value")
def scale_option_inf(w, tmp):
    return sample_argv(w, tmp, "--scale", "0.0", "--scale", "inf"), ["sample.scales", "inf"]


@case("value")
def scales_list_nan_in_params(w, tmp):
    p = params_with(w, tmp, sample={"scales": [0.0, float("nan")]})
    return sample_argv(w, tmp) + ["--params", p], ["sample.scales", "nan"]


@case("value")
def train_batch_size_huge(w, tmp):
    return ["train", "--params", w.params, "--set", f"train.batch_size={10**27}"], ["train.batch_size", "1048576"]


@case("value")
def sample_num_samples_huge(w, tmp):
    return sample_argv(w, tmp, "-n", str(10**12)), ["sample.num_samples", str(10**12)]


@case("value")
def train_steps_huge(w, tmp):
    return ["train", "--params", w.params, "--set", "train.steps=1e15"], ["train.steps"]


@case("value")
def diffusion_steps_huge(w, tmp):
    return ["train", "--params", w.params, "--set", f"diffusion.diffusion_steps={10**9}"], ["diffusion.diffusion_steps"]


@case("value")
def model_channels_huge(w, tmp):
    return ["train", "--params", w.params, "--set", f"unet.model_channels={2**30}"], ["unet.model_channels"]


@case("value")
def seed_negative(w, tmp):
    return sample_argv(w, tmp, "--seed", "-3"), ["sample.seed", "-3"]


@case("value")
def device_name_unknown(w, tmp):
    return ["train", "--params", w.params, "--set", "train.device=gpu0"], ["train.device", "gpu0"]


@case("value")
def cifar_label_outside_classes(w, tmp):
    p = cifar_archive(tmp, cifar_batches(labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, 12]))
    return prepare_argv(w, tmp, source="cifar10", path=str(p), channels=3), ["data_batch_1", "label 12", "[0, 10)"]


@case("value")
def cifar_negative_label(w, tmp):
    p = cifar_archive(tmp, cifar_batches(labels=[-1] + list(range(9))))
    return prepare_argv(w, tmp, source="cifar10", path=str(p), channels=3), ["label -1", "[0, 10)"]


@case("value")
def cifar_fewer_labels_than_images(w, tmp):
    p = cifar_archive(tmp, cifar_batches(labels=list(range(7)), count=10))
    return prepare_argv(w, tmp, source="cifar10", path=str(p), channels=3), ["7 labels", "10 images"]


@case("value")
def npz_source_negative_label(w, tmp):
    p = npz_file(tmp, arr_0=np.zeros((10, 8, 8, 1), np.uint8), arr_1=np.array([-1] + [i % 3 for i in range(9)]))
    return prepare_argv(w, tmp, source="npz", path=str(p)), [str(p), "-1", "negative"]


@case("value")
def npz_source_label_1000_among_ten(w, tmp):
    p = npz_file(tmp, arr_0=np.zeros((11, 8, 8, 1), np.uint8), arr_1=np.array(list(range(10)) + [1000]))
    return prepare_argv(w, tmp, source="npz", path=str(p)), [str(p), "1000", "data.num_classes"]


@case("value")
def npz_source_label_over_declared_classes(w, tmp):
    p = npz_file(tmp, arr_0=np.zeros((4, 8, 8, 1), np.uint8), arr_1=np.array([0, 1, 2, 5]))
    return prepare_argv(w, tmp, source="npz", path=str(p), num_classes=4), [str(p), "label 5", "[0, 4)"]


@case("value")
def npz_source_float_pixels_with_nan(w, tmp):
    p = npz_file(tmp, arr_0=np.full((4, 8, 8, 1), np.nan, np.float32))
    return prepare_argv(w, tmp, source="npz", path=str(p)), [str(p), "uint8"]


@case("value")
def filename_labels_without_prefix(w, tmp):
    root = image_folder(tmp, ["cat_1.png", "dog_2.png", "bird.png", "fish.png"])
    return (prepare_argv(w, tmp, source="imagefolder", path=str(root), labels="filename"),
            ["data.labels", "bird.png", "prefix"])


@case("value")
def dangling_symlink_image(w, tmp):
    root = image_folder(tmp, ["cat/a.png", "dog/b.png"])
    (root / "dog" / "c.png").symlink_to(tmp / "nowhere.png")
    return prepare_argv(w, tmp, source="imagefolder", path=str(root), resolution=8), ["c.png", "dangling"]


@case("value")
def unet_weights_all_nan(w, tmp):
    def nan(ck):
        for v in ck["model"].values():
            if v.is_floating_point():
                v.fill_(float("nan"))

    p = checkpoint_copy(w.unet, tmp / "nan.pt", nan)
    return sample_argv(w, tmp, "--unet", p), [str(p), "NaN"]


@case("value")
def unet_ema_holds_inf(w, tmp):
    def inf(ck):
        sd = next(iter(ck["ema"].values()))
        next(v for v in sd.values() if v.is_floating_point()).view(-1)[0] = float("inf")

    p = checkpoint_copy(w.unet, tmp / "inf.pt", inf)
    return sample_argv(w, tmp, "--unet", p), [str(p), "EMA", "NaN/inf"]


@case("value")
def classifier_weights_nan(w, tmp):
    def nan(ck):
        next(v for v in ck["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")

    p = checkpoint_copy(w.classifier, tmp / "clf.pt", nan)
    return sample_argv(w, tmp, "--unet", w.unet, "--classifier", p, "--scale", "1.0"), [str(p), "NaN"]


@case("value")
def resume_from_nan_checkpoint(w, tmp):
    run = tmp / "run"
    shutil.copytree(w.unet_dir, run)
    ck = max((run / "checkpoints").glob("ckpt-*.pt"))

    def nan(c):
        next(v for v in c["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")

    checkpoint_copy(ck, ck, nan)
    return (["train", "-q", "--params", w.params, "--set", "train.steps=3", "--out", run], [ck.name, "NaN"])


@case("value")
def evaluate_labels_outside_evaluator_classes(w, tmp):
    images = np.load(w.samples)["arr_0"]
    p = npz_file(tmp, "s.npz", arr_0=images, arr_1=np.array([12] * len(images)))
    return evaluate_argv(w, tmp, p), [str(p), "12", "[0, 10)"]


@case("value")
def sample_labels_class_outside_range(w, tmp):
    return sample_argv(w, tmp, "--labels", "12"), ["sample.labels", "12", "[0, 10)"]


@case("value")
def unet_heads_do_not_divide_width(w, tmp):
    return ["train", "-q", "--params", w.params, "--set", "unet.num_heads=3"], ["unet.num_heads", "3"]


# ------------------------------------------------------------------------------------- debris
@case("debris")
def train_device_without_cuda(w, tmp):
    return ["train", "-q", "--params", w.params, "--set", "train.device=cuda", "--out", tmp / "run"], ["train.device", "cuda"]


@case("debris")
def train_missing_dataset(w, tmp):
    return (["train", "-q", "--params", w.params, "--set", f"data.out_dir={tmp / 'none'}", "--out", tmp / "run"],
            [str(tmp / "none"), "gdm prepare"])


@case("debris")
def train_num_classes_mismatch(w, tmp):
    return (["train", "-q", "--params", w.params, "--set", "unet.num_classes=7", "--out", tmp / "run"],
            ["unet.num_classes", "7", "10"])


@case("debris")
def train_classifier_missing_dataset(w, tmp):
    return (["train-classifier", "-q", "--params", w.params, "--set", f"data.out_dir={tmp / 'none'}",
             "--out", tmp / "clf"], [str(tmp / "none")])


@case("debris")
def train_evaluator_missing_dataset(w, tmp):
    return (["train-evaluator", "-q", "--params", w.params, "--set", f"data.out_dir={tmp / 'none'}",
             "--out", tmp / "ev"], [str(tmp / "none")])


@case("debris")
def train_resume_with_other_config(w, tmp):
    run = tmp / "run"
    shutil.copytree(w.unet_dir, run)
    return (["train", "-q", "--params", w.params, "--set", "train.lr=0.001", "--set", "train.steps=3",
             "--out", run], ["train.lr", "refusing to resume"])


@case("debris")
def sample_missing_unet(w, tmp):
    return sample_argv(w, tmp, "--unet", tmp / "nope.pt"), [str(tmp / "nope.pt"), "not found"]


@case("debris")
def sample_mistyped_classifier_after_scale_zero(w, tmp):
    bad = tmp / "classifer.pt"
    return (sample_argv(w, tmp, "--unet", w.unet, "--classifier", bad, "--scale", "0.0", "--scale", "1.0"),
            [str(bad), "not found"])


@case("debris")
def sample_classifier_with_other_schedule(w, tmp):
    def other(ck):
        ck["diffusion"]["diffusion_steps"] = 77

    p = checkpoint_copy(w.classifier, tmp / "clf.pt", other)
    return (sample_argv(w, tmp, "--unet", w.unet, "--classifier", p, "--scale", "1.0"),
            [str(p), "diffusion_steps", "77"])


@case("debris")
def sample_classifier_is_a_unet(w, tmp):
    return (sample_argv(w, tmp, "--unet", w.unet, "--classifier", w.unet, "--scale", "1.0"),
            [str(w.unet), "'unet'", "'classifier'"])


@case("debris")
def sample_over_existing_output_with_bad_unet(w, tmp):
    p = tmp / "bad.pt"
    p.write_bytes(b"junk")
    return (["sample", "-q", "--params", w.params, "--unet", p, "--out", w.sample_dir], [str(p)])


@case("debris")
def evaluate_missing_evaluator(w, tmp):
    ev = tmp / "ev.pt"
    return (["evaluate", "--params", w.params, "--samples", w.samples, "--evaluator", ev, "--out", tmp / "m.json"],
            [str(ev), "not found"])


@case("debris")
def evaluate_too_few_samples(w, tmp):
    p = npz_file(tmp, "few.npz", arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    return evaluate_argv(w, tmp, p), [str(p), "2 samples"]


@case("debris")
def import_adm_bad_checkpoint(w, tmp):
    return (["import-adm", "--params", w.params, "--preset", "adm-classifier-64", "--checkpoint", w.unet,
             "--out", tmp / "imported.pt"], [str(w.unet)])


@case("debris")
def prepare_missing_source_into_new_out_dir(w, tmp):
    return (["prepare", "-q", "--params", w.params, "--set", "data.source=imagefolder",
             "--set", f"data.path={tmp / 'nothing'}", "--set", f"data.out_dir={tmp / 'new' / 'prepared'}"],
            [str(tmp / "nothing"), "not found"])


@case("debris")
def tracking_uri_is_another_apps_database(w, tmp):
    import sqlite3

    db = tmp / "app.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'ada')")
    con.commit()
    con.close()
    return (["train", "-q", "--params", w.params, "--set", "tracking.enabled=true",
             "--set", f"tracking.tracking_uri=sqlite:///{db}", "--out", tmp / "run"],
            [str(db), "customers", "another application"])


@case("debris")
def tracking_uri_is_a_text_file(w, tmp):
    f = tmp / "notes.db"
    f.write_text("meeting notes\n" * 20)
    return (["train", "-q", "--params", w.params, "--set", "tracking.enabled=true",
             "--set", f"tracking.tracking_uri=sqlite:///{f}", "--out", tmp / "run"], [str(f), "not a SQLite"])


@case("value")
def train_lr_that_overflows_the_optimizer(w, tmp):
    return ["train", "-q", "--params", w.params, "--set", "train.lr=1e38"], ["train.lr", "1e+38"]


# ------------------------------------------------------- the study's inputs (ADM-U, classifier-free)
def superres_checkpoint(w, tmp: Path, low_resolution: int, edit: Callable[[dict], None] | None = None) -> Path:
    """A real (untrained) ADM-U checkpoint for the world's dataset, upsampling from `low_resolution`."""
    from gdm.config import validate
    from gdm.data.dataset import read_manifest
    from gdm.io import save_checkpoint
    from gdm.models import FORMAT, build
    from gdm.train.targets import UPSAMPLER

    cfg = validate({**w.raw, "upsampler": {**w.raw["upsampler"], "low_resolution": low_resolution}})
    manifest = read_manifest(w.dataset)
    kw = UPSAMPLER.model_kwargs(cfg, manifest)
    ckpt = {"format": FORMAT, "kind": "superres", "model_kwargs": kw, "model": build("superres", kw).state_dict(),
            "step": 0, "config": cfg.to_dict(), "data": manifest.info()}
    if edit is not None:
        edit(ckpt)
    p = tmp / "upsampler.pt"
    save_checkpoint(p, ckpt)
    return p


def upsample_argv(w, tmp: Path, upsampler: Path, *more) -> list:
    return sample_argv(w, tmp, "--unet", w.unet, "--upsample", upsampler, *more)


@case("debris")
def sample_upsample_missing_checkpoint(w, tmp):
    up = tmp / "upsampler.pt"
    return upsample_argv(w, tmp, up), [str(up), "not found", "gdm train-upsampler"]


@case("debris")
def sample_upsample_with_a_unet_checkpoint(w, tmp):
    return upsample_argv(w, tmp, w.unet), [str(w.unet), "'unet'", "'superres'"]


@case("debris")
def sample_upsample_from_another_low_resolution(w, tmp):
    up = superres_checkpoint(w, tmp, 4)  # upsamples 4x4 while the base UNet samples 8x8
    return upsample_argv(w, tmp, up), [str(up), "8x8x1", "4x4x1"]


@case("debris")
def sample_upsample_default_low_res_model_missing(w, tmp):
    up = superres_checkpoint(w, tmp, 4)
    return sample_argv(w, tmp, "--upsample", up), ["unet-low", "not found", "--low-res"]


@case("decode")
def sample_upsample_checkpoint_garbage(w, tmp):
    up = tmp / "upsampler.pt"
    up.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    return upsample_argv(w, tmp, up), [str(up)]


@case("value")
def sample_upsampler_weights_nan(w, tmp):
    def poison(ck):
        ck["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                       for k, v in ck["model"].items()}

    up = superres_checkpoint(w, tmp, 4, poison)
    return upsample_argv(w, tmp, up), [str(up), "NaN"]


@case("debris")
def sample_free_guidance_without_class_dropout(w, tmp):
    return (sample_argv(w, tmp, "--unet", w.unet, "--guidance", "free", "--scale", "1.0"),
            [str(w.unet), "class_dropout", "sample.guidance"])


@case("value")
def sample_guidance_kind_unknown(w, tmp):
    return sample_argv(w, tmp, "--unet", w.unet, "--guidance", "both"), ["sample.guidance", "both"]


@case("value")
def upsampler_low_resolution_not_below_its_output(w, tmp):
    return (["train-upsampler", "-q", "--params", w.params, "--set", "upsampler.low_resolution=8",
             "--out", tmp / "up"], ["upsampler.low_resolution", "8"])


@case("value")
def upsampler_train_resolution_above_the_data(w, tmp):
    return (["train-upsampler", "-q", "--params", w.params, "--set", "upsampler_train.resolution=64",
             "--out", tmp / "up"], ["upsampler_train.resolution", "64"])


@case("value")
def class_dropout_on_an_unconditional_unet(w, tmp):
    return (["train", "-q", "--params", w.params, "--set", "unet.num_classes=null", "--set", "unet.class_dropout=0.1",
             "--out", tmp / "run"], ["class_dropout", "0.1"])


@case("value")
def pipeline_free_guidance_model_without_dropout(w, tmp):
    return (["train", "-q", "--params", w.params, "--set", "pipeline.free_guidance=[cond]", "--out", tmp / "run"],
            ["pipeline.free_guidance", "cond", "class_dropout"])


@case("debris")
def train_upsampler_missing_dataset(w, tmp):
    return (["train-upsampler", "-q", "--params", w.params, "--set", f"data.out_dir={tmp / 'none'}",
             "--out", tmp / "up"], [str(tmp / "none")])


@case("debris")
def train_upsampler_device_without_cuda(w, tmp):
    return (["train-upsampler", "-q", "--params", w.params, "--set", "upsampler_train.device=cuda",
             "--out", tmp / "up"], ["upsampler_train.device", "cuda"])


@case("debris")
def train_upsampler_num_classes_mismatch(w, tmp):
    return (["train-upsampler", "-q", "--params", w.params, "--set", "upsampler.num_classes=7",
             "--out", tmp / "up"], ["upsampler.num_classes", "7", "10"])


@case("fs")
def train_upsampler_out_is_a_file(w, tmp):
    f = tmp / "up"
    f.write_text("not a folder")
    return ["train-upsampler", "-q", "--params", w.params, "--out", f], [str(f)]
