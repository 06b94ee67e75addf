"""Typed, frozen configuration loaded from params.yaml, validated once.

One name everywhere: a params.yaml key (`unet.model_channels`) is the field of the typed config
(`cfg.unet.model_channels`), the constructor keyword (`UNet(model_channels=...)`) and the MLflow
param name. Validation errors name the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gdm.errors import ConfigError, show_path
from gdm.io import parse_yaml, read_yaml

DEFAULT_PARAMS = "params.yaml"
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (1024**3 // 4 // 3)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _local_path(v: str | None) -> str | None:
    """Keys that name a folder/file on this machine: a URL (s3://, gs://, http://) would become a local
    folder named 's3:' (silently wrong), so it is refused at load."""
    if v is not None and _URL_RE.match(str(v)):
        raise ValueError(f"must be a local path (a shared filesystem mount works), not a URL like {v!r}; "
                         "S3 is supported for tracking.artifact_location (and the data source where documented)")
    return v


# Sane bounds on sizes: far above any real run, far below what overflows a tensor or a disk.
MAX_BATCH = 1 << 20
MAX_STEPS = 10**9
MAX_SAMPLES = 10**8
MAX_SEED = 2**63 - 1
MAX_WIDTH = 1 << 14
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


def Batch(default: int) -> Any:
    return Field(default, ge=1, le=MAX_BATCH)


def Steps(default: int, ge: int = 1) -> Any:
    return Field(default, ge=ge, le=MAX_STEPS)


def Seed(default: int) -> Any:
    return Field(default, ge=0, le=MAX_SEED)


def _check_device(v: str) -> str:
    if not _DEVICE_RE.match(str(v)):
        raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu[:N]'")
    return v


class _Section(BaseModel):
    # allow_inf_nan=False: every float key (and float list item) must be finite; NaN/inf are refused
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False)

    @field_validator("device", check_fields=False)
    @classmethod
    def _device(cls, v: str) -> str:
        return _check_device(v)


# torch.compile modes (gdm/accel.py); "none" runs eagerly. YAML false/true read as none/default.
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def _compile_mode(v: Any) -> Any:
    return {False: "none", True: "default"}[v] if isinstance(v, bool) else v


# ----------------------------------------------------------------------------------------- data
class DataConfig(_Section):
    source: Literal["digits", "imagefolder", "cifar10", "npz"] = "digits"
    path: str | None = None  # file/folder for imagefolder, cifar10, npz
    name: str | None = None  # output folder name under out_dir; defaults to `source`
    out_dir: str = "data/prepared"
    resolution: int = Field(8, ge=4, le=1024)
    channels: Literal[1, 3] = 1
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = Seed(0)
    labels: Literal["auto", "subfolders", "filename", "none"] = "auto"  # imagefolder labelling
    on_bad_image: Literal["error", "skip"] = "error"
    shard_size: int = Field(4096, ge=1, le=10**7)  # rows per Parquet shard
    row_group_size: int = Field(64, ge=1)  # rows per Parquet row group: the reader's unit of reading and shuffling
    num_workers: int = Field(0, ge=0)  # prepare: decode/resize/encode processes (0 = in the main process)
    overwrite: bool = False  # prepare on s3://: replace a DIFFERENT dataset already at the prefix
    num_classes: int | None = Field(None, ge=1, le=1_000_000)  # None: from the source; set: labels checked
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, le=1 << 40)  # larger images are refused (decompression bombs)
    random_flip: bool = False  # reader augmentation (ADM uses it on ImageNet; not for digits)
    shuffle_window: int = Field(16384, ge=1)  # reader: rows shuffled together (gdm.data.order); memory ~ window

    @field_validator("out_dir", "path")
    @classmethod
    def _local_or_s3(cls, v: str | None) -> str | None:
        if v is None or "://" not in v:
            return v
        if not v.startswith("s3://"):
            raise ValueError(f"must be a local path or an s3://bucket/prefix URL, got {v!r}")
        bucket = v[len("s3://"):].split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"{v!r}: {bucket!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source != "digits" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self

    @property
    def dataset_name(self) -> str:
        return self.name or self.source

    @property
    def prepared_dir(self) -> Path | str:
        """`out_dir/<name>`: a Path, or an `s3://bucket/prefix/<name>` URL (a str)."""
        if self.out_dir.startswith("s3://"):
            return f"{self.out_dir.rstrip('/')}/{self.dataset_name}"
        return Path(self.out_dir) / self.dataset_name


# ----------------------------------------------------------------------------------------- nets
def _check_mult(v: tuple[float, ...]) -> tuple[float, ...]:
    if len(v) == 0 or len(v) > 12 or any(not 0 < m <= 64 for m in v):
        raise ValueError("must be a list of 1 to 12 positive numbers up to 64, e.g. [1, 2, 2]")
    return v


class UNetConfig(_Section):
    """ADM UNet knobs. Defaults follow the released ImageNet models except the width/depth."""

    model_channels: int = Field(32, ge=1, le=MAX_WIDTH)
    channel_mult: tuple[float, ...] = (1, 2)
    num_res_blocks: int = Field(1, ge=1, le=64)
    attention_resolutions: tuple[int, ...] = (4,)
    num_heads: int = Field(1, ge=1, le=1024)
    num_head_channels: int = Field(-1, le=MAX_WIDTH)
    num_heads_upsample: int = Field(-1, le=1024)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    rescale_residual: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    learn_sigma: bool = True
    num_classes: int | None = Field(10, ge=2, le=1_000_000)
    attention_order: Literal["legacy", "new"] = "legacy"
    use_checkpoint: bool = False
    # Classifier-free guidance (Ho & Salimans 2022): probability of replacing y by the null label
    # (a learned extra embedding row, index num_classes) during training. 0: the paper's ADM models.
    class_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    _mult = field_validator("channel_mult")(classmethod(lambda cls, v: _check_mult(v)))

    @model_validator(mode="after")
    def _dropout_needs_labels(self) -> UNetConfig:
        if self.class_dropout > 0 and self.num_classes is None:
            raise ValueError(
                f"class_dropout {self.class_dropout} needs a class-conditional UNet (num_classes set); "
                "set class_dropout: 0.0 for an unconditional model"
            )
        return self

    @field_validator("num_head_channels", "num_heads_upsample")
    @classmethod
    def _minus_one_or_positive(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("must be -1 (unused) or a positive integer")
        return v


class UpsamplerConfig(UNetConfig):
    """ADM-U (SuperResUNet): the `unet` keys plus the low resolution it upsamples from. Its large size is
    upsampler_train.resolution or data.resolution; the low-res input is the large image area-downsampled
    (guided-diffusion's super_res_train) at training time and the base model's sample when sampling."""

    low_resolution: int | None = Field(None, ge=1, le=1024)  # null: a quarter of the large size (ADM's 64->256)


class ClassifierConfig(_Section):
    """Noisy classifier: the UNet encoder half + middle block + a pooling head."""

    model_channels: int = Field(32, ge=1, le=MAX_WIDTH)
    channel_mult: tuple[float, ...] = (1, 2)
    num_res_blocks: int = Field(1, ge=1, le=64)
    attention_resolutions: tuple[int, ...] = (4,)
    num_heads: int = Field(1, ge=1, le=1024)
    num_head_channels: int = Field(32, le=MAX_WIDTH)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_order: Literal["legacy", "new"] = "legacy"
    pool: Literal["adaptive", "attention", "spatial", "spatial_v2"] = "attention"
    use_checkpoint: bool = False

    _mult = field_validator("channel_mult")(classmethod(lambda cls, v: _check_mult(v)))

    @model_validator(mode="after")
    def _pool_heads(self) -> ClassifierConfig:
        if self.pool == "attention" and self.num_head_channels < 1:
            raise ValueError(
                "classifier.pool 'attention' needs classifier.num_head_channels >= 1 "
                f"(got {self.num_head_channels}); the released classifiers use 64"
            )
        return self


# ------------------------------------------------------------------------------------ diffusion
class DiffusionConfig(_Section):
    noise_schedule: Literal["linear", "cosine"] = "cosine"
    diffusion_steps: int = Field(1000, ge=2, le=100_000)
    loss_type: Literal["mse", "hybrid", "kl"] = "hybrid"
    timestep_sampler: Literal["uniform", "loss-second-moment"] = "uniform"


# ------------------------------------------------------------------------------------- training
class TrainConfig(_Section):
    steps: int = Steps(3000)  # required step limit: training always ends
    batch_size: int = Batch(64)
    microbatch: int = Field(-1, ge=-1, le=MAX_BATCH)  # -1: no accumulation; else split each batch in chunks
    lr: float = Field(3e-4, gt=0, le=10.0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "warmup", "linear"] = "constant"
    warmup_steps: int = Steps(0, ge=0)
    ema_rates: tuple[float, ...] = (0.999,)
    ema_warmup: bool = True  # rate min(rate, (1+n)/(10+n)) early on
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float | None = Field(None, gt=0)
    checkpoint_every: int = Steps(1000)
    keep_checkpoints: int = Field(2, ge=1, le=10_000)
    log_every: int = Steps(50)
    seed: int = Seed(0)
    device: str = "auto"
    num_workers: int = Field(0, ge=0, le=1024)
    nproc: int = Field(1, ge=1, le=4096)  # >1: `gdm train` re-launches itself through torchrun with this many ranks
    # Train at this resolution: the prepared images are area-downsampled on the fly (ADM-U's low-res
    # view); null: as prepared. The low-resolution base models of the upsampling study use it.
    resolution: int | None = Field(None, ge=1, le=1024)
    compile: CompileMode = "none"  # torch.compile the model + loss (same math up to fp32 rounding)
    fused_optimizer: bool = True  # AdamW as one fused kernel (same update up to fp32 rounding); false: torch's loop

    _compile = field_validator("compile", mode="before")(classmethod(lambda cls, v: _compile_mode(v)))

    @field_validator("ema_rates")
    @classmethod
    def _rates(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0.0 < r < 1.0 for r in v):
            raise ValueError("must be a non-empty list of rates in (0, 1), e.g. [0.999]")
        return v

    @model_validator(mode="after")
    def _micro(self) -> TrainConfig:
        if self.microbatch > 0 and self.microbatch > self.batch_size:
            raise ValueError(
                f"train.microbatch ({self.microbatch}) must be <= train.batch_size ({self.batch_size})"
            )
        return self


class ClassifierTrainConfig(_Section):
    steps: int = Steps(1000)
    batch_size: int = Batch(128)
    lr: float = Field(3e-4, gt=0, le=10.0)
    weight_decay: float = Field(0.05, ge=0)
    lr_anneal: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_every: int = Steps(500)
    keep_checkpoints: int = Field(2, ge=1, le=10_000)
    log_every: int = Steps(50)
    eval_every: int = Steps(500)
    seed: int = Seed(1)
    device: str = "auto"
    num_workers: int = Field(0, ge=0)  # DataLoader workers decoding training batches
    nproc: int = Field(1, ge=1, le=4096)  # >1: `gdm train-classifier` re-launches itself through torchrun
    resolution: int | None = Field(None, ge=1, le=1024)  # as train.resolution
    fused_optimizer: bool = True  # as train.fused_optimizer


class EvaluatorConfig(_Section):
    width: int = Field(32, ge=8, le=MAX_WIDTH)
    feature_dim: int = Field(64, ge=8, le=MAX_WIDTH)
    steps: int = Steps(1500)
    batch_size: int = Batch(128)
    lr: float = Field(2e-3, gt=0, le=10.0)
    seed: int = Seed(2)


# ------------------------------------------------------------------------------------- sampling
class SampleConfig(_Section):
    sampler: Literal["ddpm", "ddim", "dpmpp2m"] = "ddim"  # dpmpp2m: DPM-Solver++(2M), deterministic
    respacing: str = "ddim25"
    # Per-sampler respacing, e.g. {dpmpp2m: ddim10}: a sampler named here samples on its own timesteps
    # instead of `respacing` (a higher-order solver reaches DDIM-25's quality in fewer steps). Resolved
    # once per sampling stage (Config.for_sampling); an explicit `gdm sample --respacing` wins.
    sampler_respacing: dict[Literal["ddpm", "ddim", "dpmpp2m"], str] = Field(default_factory=dict)
    eta: float = Field(0.0, ge=0.0)
    scales: tuple[float, ...] = (0.0,)
    # classifier: ADM's classifier guidance (scale s); free: classifier-free guidance (scale w,
    # eps = (1 + w) eps(x, y) - w eps(x, null); needs a UNet trained with unet.class_dropout > 0)
    guidance: Literal["classifier", "free"] = "classifier"
    # Two-stage sampling (ADM-U): the upsampler's own sampler and respacing (the reference samples its
    # upsamplers with 250 DDPM steps); null sampler: the same as `sampler`.
    upsample_sampler: Literal["ddpm", "ddim", "dpmpp2m"] | None = "ddpm"
    upsample_respacing: str = "250"
    num_samples: int = Field(500, ge=1, le=MAX_SAMPLES)
    batch_size: int = Batch(250)
    seed: int = Seed(0)
    labels: str = "balanced"  # random | balanced | an integer class
    clip_denoised: bool = True
    use_ema: bool = True
    chunk_size: int = Field(250, ge=1, le=MAX_SAMPLES)  # samples per resumable chunk file
    device: str = "auto"
    nproc: int = Field(1, ge=1, le=4096)  # >1: `gdm sample` re-launches itself through torchrun (chunks split over ranks)
    compile: CompileMode = "none"  # torch.compile the UNet and the guidance classifier

    _compile = field_validator("compile", mode="before")(classmethod(lambda cls, v: _compile_mode(v)))

    @field_validator("scales", mode="before")
    @classmethod
    def _scales_are_floats(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)) and any(isinstance(s, int) and not isinstance(s, bool) for s in v):
            fixed = [float(s) for s in v]
            raise ValueError(f"write the scales as floats, e.g. {fixed} (DVC puts their text in stage names and paths)")
        return v

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(s < 0 for s in v):
            raise ValueError("must be a non-empty list of non-negative guidance scales")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: str) -> str:
        if v not in ("random", "balanced") and not str(v).lstrip("-").isdigit():
            raise ValueError("must be 'random', 'balanced' or an integer class index")
        return str(v)


class EvalConfig(_Section):
    features: Literal["evaluator", "inception"] = "evaluator"
    inception_weights: str | None = None
    reference: Literal["train", "val"] = "train"
    batch_size: int = Batch(250)
    kid_subsets: int = Field(50, ge=1, le=100_000)
    kid_subset_size: int = Field(100, ge=2, le=MAX_SAMPLES)
    cache_dir: str = "data/cache"

    _paths = field_validator("cache_dir", "inception_weights")(classmethod(lambda cls, v: _local_path(v)))


class TrackingConfig(_Section):
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = None  # for a new experiment; None: MLflow's default (./mlruns)
    experiment: str = "gdm-digits"
    register_models: bool = True
    unet_model_name: str = "gdm-unet"
    classifier_model_name: str = "gdm-classifier"
    aliases: tuple[str, ...] = ("candidate",)
    reevaluate_alias: str = "candidate"  # promote a version to "champion" by hand when it holds up
    reevaluate_tolerance: float = Field(2.0, ge=0)
    system_metrics: bool = True  # CPU/GPU/memory as system/* metrics on training runs
    system_metrics_interval: float = Field(10.0, gt=0)  # seconds between samples
    # First contact with an http(s) tracking server: if it does not answer (or answers 5xx) within this
    # many seconds, the stage goes on untracked and says so at once (never MLflow's ~20 min of retries).
    timeout_s: float = Field(10.0, gt=0, le=3600)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_store(cls, v: str) -> str:
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme in ("s3", "gs", "wasbs", "abfss"):
            raise ValueError(f"{v!r} is an artifact store, not a tracking store: use sqlite:///mlflow.db or an "
                             "http(s):// MLflow server, and put the S3 location in tracking.artifact_location")
        return v

    @field_validator("artifact_location")
    @classmethod
    def _artifact_store(cls, v: str | None) -> str | None:
        if v is not None and v.lower().startswith("s3:") and not v.lower().startswith("s3://"):
            raise ValueError(f"{v!r}: an S3 location is written s3://bucket/prefix")
        if v is not None and v.lower().startswith("s3://") and len(v) <= len("s3://"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return v


class PipelineConfig(_Section):
    runs_dir: str = "runs"
    reports_dir: str = "reports"
    # Table-4 pattern: model variants trained by the default pipeline (name -> overrides).
    models: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"cond": {}, "uncond": {"unet.num_classes": None}}
    )
    samplers: tuple[Literal["ddpm", "ddim", "dpmpp2m"], ...] = ("ddim",)
    # Models also swept with classifier-free guidance (sample.guidance: free) on the sample.scales list;
    # each must be one of `models` trained with unet.class_dropout > 0 (checked at load).
    free_guidance: tuple[str, ...] = ()
    # The upsampling study (paper Table 5): these models are trained again at upsampler.low_resolution
    # (with low_res_overrides, as is a low-res noisy classifier), sampled (guided on sample.scales) and
    # upsampled by the ADM-U model, and compared with the direct models. Run by `gdm.pipeline`'s
    # upsampling stages (dvc.yaml always has them; the demo flow runs them with --upsampling).
    upsampling_models: tuple[str, ...] = ()
    low_res_overrides: dict[str, Any] = Field(default_factory=dict)
    # Architecture ablations (Tables 1-3): `ablation_base` overrides first, then the variant's own.
    ablation_base: dict[str, Any] = Field(default_factory=dict)
    ablations: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"base": {}})
    baseline: str = "base"  # the ablation every other one is compared with (delta FID)
    # Orchestration (the Prefect flows; dvc.yaml ignores these): how stages are run, not what they make.
    task_runner: Literal["threads", "dask"] = "threads"  # threads: one process; dask: LocalCluster or dask_address
    dask_address: str | None = None  # tcp://host:8786 of an existing Dask scheduler (None: a LocalCluster)
    dask_workers: int = Field(2, ge=1)  # LocalCluster worker processes
    max_parallel: int | None = Field(None, ge=1)  # stages at once (None: as many as the resources allow)
    cpus: int | None = Field(None, ge=1)  # CPU threads this host offers to stages (None: os.cpu_count())
    gpus: int | None = Field(None, ge=0)  # GPUs this host offers (None: torch.cuda.device_count())
    stage_threads: int | None = Field(None, ge=1)  # torch threads per heavy stage (None: cpus // 2, >= 1)
    dispatch: Literal["local", "deployments"] = "local"  # deployments: heavy stages as runs of stage_deployment
    stage_deployment: str = "gdm-stage/stage"  # flow-name/deployment-name on a work pool (prefect.yaml)

    _paths = field_validator("runs_dir", "reports_dir")(classmethod(lambda cls, v: _local_path(v)))

    @model_validator(mode="after")
    def _names(self) -> PipelineConfig:
        reserved = {"classifier", "evaluator"}
        for name in list(self.models) + list(self.ablations):
            if not _NAME_RE.match(name) or name in reserved:
                raise ValueError(
                    f"pipeline variant name {name!r} must match [A-Za-z0-9_-]+ and not be one of {sorted(reserved)}"
                )
        for key in ("free_guidance", "upsampling_models"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                raise ValueError(f"pipeline.{key} {list(names)} names a model twice")
            unknown = [n for n in names if n not in self.models]
            if unknown:
                raise ValueError(f"pipeline.{key}: {unknown} are not in pipeline.models {sorted(self.models)}")
        both = set(self.models) & set(self.ablations)
        if both:
            raise ValueError(f"pipeline.models and pipeline.ablations share names {sorted(both)}")
        if self.baseline not in self.ablations:
            raise ValueError(
                f"pipeline.baseline {self.baseline!r} is not one of pipeline.ablations {sorted(self.ablations)} "
                "(declare at least the baseline, e.g. `base: {}`: dvc.yaml always has the ablation stages)"
            )
        return self


class Config(_Section):
    data: DataConfig = DataConfig()
    unet: UNetConfig = UNetConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    classifier_train: ClassifierTrainConfig = ClassifierTrainConfig()
    upsampler: UpsamplerConfig = UpsamplerConfig()
    upsampler_train: TrainConfig = TrainConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        for train in ("train", "classifier_train", "upsampler_train"):
            r = getattr(self, train).resolution
            if r is not None and r > self.data.resolution:
                raise ValueError(f"{train}.resolution {r} is above data.resolution {self.data.resolution}: "
                                 "training only downsamples the prepared images (prepare them larger)")
        for section, train in (("unet", "train"), ("classifier", "classifier_train"),
                               ("upsampler", "upsampler_train")):
            net = getattr(self, section)
            res = self.resolution(train)
            where = f"{train}.resolution" if getattr(self, train).resolution else "data.resolution"
            _check_attention(section, net.attention_resolutions, res, len(net.channel_mult), where)
            _check_widths(section, net, res)
        low = self.upsampler.low_resolution
        if low is not None and low >= self.resolution("upsampler_train"):
            raise ValueError(
                f"upsampler.low_resolution {low} must be below the resolution it upsamples to, "
                f"{self.resolution('upsampler_train')} (upsampler_train.resolution or data.resolution)"
            )
        check_loss_and_variance(self, "unet")
        if self.pipeline.upsampling_models:  # the upsampler shares `diffusion` (checked at its training too)
            check_loss_and_variance(self, "upsampler")
        return self

    # -- helpers -------------------------------------------------------------------------
    def resolution(self, train_section: str = "train") -> int:
        """The resolution a trainer works at: `<train_section>.resolution`, else data.resolution."""
        return getattr(self, train_section).resolution or self.data.resolution

    def low_resolution(self) -> int:
        """The upsampler's input size (upsampler.low_resolution, default a quarter of its large size)."""
        return self.upsampler.low_resolution or max(1, self.resolution("upsampler_train") // 4)

    def low_res(self, name: str | None = None) -> Config:
        """The config of model `name` (None: the noisy classifier) at the upsampler's low resolution:
        the variant's overrides, train.resolution and classifier_train.resolution set to the low
        resolution, then pipeline.low_res_overrides (e.g. attention resolutions that exist down there)."""
        low = self.low_resolution()
        over = {}
        if name is not None:
            if name not in self.pipeline.models:
                raise ConfigError(f"unknown model '{name}' for the upsampling study; known: pipeline.models "
                                  f"{sorted(self.pipeline.models)}")
            over = dict(self.pipeline.models[name])
        over.update({"train.resolution": low, "classifier_train.resolution": low})
        what = f"model {name!r}" if name else "the classifier"
        return self.with_overrides({**over, **self.pipeline.low_res_overrides},
                                   origin=f"{what} at upsampler.low_resolution {low} (pipeline.low_res_overrides)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Flattened `section.key` -> value (MLflow params use exactly these names)."""
        return flatten(self.to_dict())

    def with_overrides(self, overrides: dict[str, Any], origin: str = "override") -> Config:
        raw = self.to_dict()
        for key, value in overrides.items():
            set_dotted(raw, key, value, origin=origin)
        return validate(raw, origin=origin)

    def for_sampling(self) -> Config:
        """This config with `sample.respacing` as `sample.sampler_respacing` sets it for `sample.sampler`
        (the map is then emptied, so the resolved config logged and written with the samples says which
        timesteps were used). Unchanged where the sampler has no entry."""
        sc = self.sample
        if sc.sampler not in sc.sampler_respacing:
            return self
        return self.with_overrides({"sample.respacing": sc.sampler_respacing[sc.sampler], "sample.sampler_respacing": {}},
                                   origin="sample.sampler_respacing")

    def variant(self, name: str) -> Config:
        """The config of a model variant: `pipeline.models[name]`, or for an ablation
        `pipeline.ablation_base` then `pipeline.ablations[name]`."""
        p = self.pipeline
        if name in p.models:
            return self.with_overrides(p.models[name], origin=f"pipeline.models.{name}")
        if name in p.ablations:
            return self.with_overrides({**p.ablation_base, **p.ablations[name]}, origin=f"pipeline.ablations.{name}")
        raise ConfigError(
            f"unknown variant '{name}'; known: pipeline.models {sorted(p.models)}, "
            f"pipeline.ablations {sorted(p.ablations)}"
        )

    def check_variants(self) -> Config:
        """Validate every declared variant once, at load (errors name the variant and key)."""
        for name in list(self.pipeline.models) + list(self.pipeline.ablations):
            self.variant(name)
        for name in self.pipeline.upsampling_models:
            self.low_res(name)
        if self.pipeline.upsampling_models:
            self.low_res(None)
        for name in self.pipeline.free_guidance:
            if self.variant(name).unet.class_dropout <= 0:
                raise ConfigError(
                    f"pipeline.free_guidance: model {name!r} has unet.class_dropout 0, so it cannot be sampled with "
                    f"classifier-free guidance; give it a class dropout (pipeline.models.{name}: "
                    "{unet.class_dropout: 0.1}) or remove it from pipeline.free_guidance"
                )
        return self


def check_loss_and_variance(cfg: Config, section: str) -> None:
    """diffusion.loss_type must fit `<section>.learn_sigma` (raises ValueError naming both keys)."""
    learn_sigma = getattr(cfg, section).learn_sigma
    if cfg.diffusion.loss_type == "hybrid" and not learn_sigma:
        raise ValueError(
            f"diffusion.loss_type 'hybrid' needs {section}.learn_sigma: true "
            "(use loss_type 'mse' for a fixed-variance model)"
        )
    if cfg.diffusion.loss_type == "mse" and learn_sigma:
        raise ValueError(
            f"diffusion.loss_type 'mse' with {section}.learn_sigma: true leaves the variance untrained; "
            f"use 'hybrid' (ADM's default) or set {section}.learn_sigma: false"
        )


def _check_attention(section: str, attn: tuple[int, ...], resolution: int, levels: int,
                     where: str = "data.resolution") -> None:
    reachable = [resolution // (2**i) for i in range(levels)]
    for r in attn:
        if r not in reachable:
            raise ValueError(
                f"{section}.attention_resolutions: {r} is not reachable from {where} "
                f"{resolution} with {levels} levels; allowed: {reachable}"
            )
    if resolution % (2 ** (levels - 1)):
        raise ValueError(
            f"{section}.channel_mult: {levels} levels need {where} divisible by "
            f"{2 ** (levels - 1)}, got {resolution}"
        )


def _check_widths(section: str, net: UNetConfig | ClassifierConfig, resolution: int) -> None:
    for i, m in enumerate(net.channel_mult):
        ch = int(m * net.model_channels)
        if net.num_head_channels == -1 and resolution // 2**i in net.attention_resolutions:
            for key in ("num_heads", "num_heads_upsample"):
                heads = getattr(net, key, -1)
                if heads > 0 and ch % heads:
                    raise ValueError(f"{section}.{key} {heads} does not divide the width {ch} of the attention "
                                     f"level at resolution {resolution // 2**i}")
        if ch % 32:
            raise ValueError(
                f"{section}.model_channels x channel_mult gives width {ch} (mult {m}): GroupNorm(32) "
                "needs every level width to be a multiple of 32"
            )
        if net.num_head_channels != -1 and ch % net.num_head_channels:
            raise ValueError(
                f"{section}.num_head_channels {net.num_head_channels} does not divide the level width {ch}"
            )


# ------------------------------------------------------------------------- loading / overrides
def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and prefix.count(".") < 1:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any, origin: str = "override") -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{origin}: key '{key}' must be a dotted path like 'unet.model_channels'")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            known = sorted(k for k, v in node.items() if isinstance(v, dict))
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{origin}: unknown section '{where}'; known sections: {known}")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node and parts[:2] not in (["pipeline", "models"], ["pipeline", "ablations"],
                                              ["pipeline", "ablation_base"], ["pipeline", "low_res_overrides"]):
        raise ConfigError(
            f"{origin}: unknown key '{key}'; known keys in '{'.'.join(parts[:-1])}': {sorted(node)}"
        )
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key.path=value`; the value is read as YAML (`8`, `[32,16]`, `null`, `true`)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected key.path=value, e.g. unet.model_channels=64")
    key, _, value = text.partition("=")
    parsed = parse_yaml(value, f"--set '{text}': value") if value.strip() else ""
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed


def validate(raw: Any, origin: str = DEFAULT_PARAMS) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, raw, origin)) from None


def _format_errors(exc: ValidationError, raw: dict[str, Any], origin: str) -> str:
    lines = [f"{origin}: invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            node: Any = Config
            allowed: list[str] = []
            for p in parent:
                node = node.model_fields[p].annotation if hasattr(node, "model_fields") else None
            if node is not None and hasattr(node, "model_fields"):
                allowed = sorted(node.model_fields)
            lines.append(f"  {loc}: unknown key; allowed keys: {allowed}")
            continue
        value = _lookup(raw, err["loc"])
        where = f"  {loc}: " if loc else "  "
        shown = f" (got {value!r})" if value is not _MISSING and not isinstance(value, dict) else ""
        lines.append(f"{where}{msg}{shown}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(raw: Any, loc: tuple) -> Any:
    node = raw
    for p in loc:
        if isinstance(node, dict) and p in node or isinstance(node, (list, tuple)) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            return _MISSING
    return node


def load_config(
    path: str | Path = DEFAULT_PARAMS, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Read params.yaml (missing file -> all defaults is NOT allowed: it must exist), apply overrides."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ConfigError(f"params file {show_path(path)}: is a directory, expected a YAML file")
        raise ConfigError(f"params file not found: {show_path(path)}")
    raw = read_yaml(path)
    raw = copy.deepcopy(raw) if raw else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    cfg = validate(raw, origin=str(path))
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        full = cfg.to_dict()
        for key, value in items:
            set_dotted(full, key, value, origin=f"--set {key}")
        cfg = validate(full, origin=f"{path} with --set overrides")
    return cfg.check_variants()
