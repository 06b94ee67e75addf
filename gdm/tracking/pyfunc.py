"""The trained UNet as an MLflow pyfunc model: checkpoint + sampler, with a signature.

    model = mlflow.pyfunc.load_model("models:/gdm-unet-cond@candidate")
    images = model.predict(pd.DataFrame({"index": range(8), "label": [3] * 8}),
                           params={"respacing": "ddim25", "seed": 0})   # uint8 (N, H, W, C)

Row i is sample `index` of `gdm sample` with the same settings (per-sample seeding), unguided; `label`
-1 (or a missing column) follows the logged `sample.labels` rule. Saved with `save_model` into a
folder (models-from-code: `sampler_model.py` is copied in, nothing is pickled) and logged with the
explicit-run-id client (no fluent global run), then registered from
`runs:/<run id>/<artifact path>`. Loading needs the `gdm` package importable (as with any pyfunc
that wraps project code).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from gdm.config import SampleConfig

MODEL_CODE = Path(__file__).with_name("sampler_model.py")  # models-from-code: no pickled Python object

PARAMS = ("sampler", "respacing", "eta", "seed", "labels", "clip_denoised", "use_ema", "batch_size", "device")


class GdmSampler(mlflow.pyfunc.PythonModel):
    # The signature is given explicitly (below): MLflow's type-hint validation wrapper around `predict`
    # (and its "Add type hints" warning, raised when this class is defined) does not apply. A module-level
    # warnings filter did not keep that warning out of the flow's test run (probably other threads
    # leaving warnings.catch_warnings, which restores the process-wide filter list).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import yaml

        self.unet = context.artifacts["unet"]
        self.defaults = yaml.safe_load(Path(context.artifacts["sample_config"]).read_text())

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        from gdm.sampling import sample_images

        sc = SampleConfig(**{**self.defaults, **{k: v for k, v in (params or {}).items() if v is not None}})
        n = len(model_input)
        cols = getattr(model_input, "columns", [])
        index = np.asarray(model_input["index"], dtype=np.int64) if "index" in cols else np.arange(n)
        labels = np.asarray(model_input["label"], dtype=np.int64) if "label" in cols else None
        return sample_images(self.unet, sc, index, labels, device=sc.device if sc.device != "auto" else "cpu")


def signature(sc: SampleConfig, image_shape: tuple[int, int, int]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    defaults = sc.model_dump(mode="json")
    kinds = {"sampler": "string", "respacing": "string", "eta": "double", "seed": "long", "labels": "string",
             "clip_denoised": "boolean", "use_ema": "boolean", "batch_size": "long", "device": "string"}
    return ModelSignature(
        inputs=Schema([ColSpec("long", "index", required=False), ColSpec("long", "label", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]),
        params=ParamSchema([ParamSpec(k, kinds[k], defaults[k]) for k in PARAMS]),
    )


def save_sampler_model(unet: Path, sc: SampleConfig, image_shape: tuple[int, int, int], dst: Path) -> Path:
    """Write the pyfunc model folder (MLmodel, artifacts/model.pt, artifacts/sample.yaml) under `dst`."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no input example": the signature is explicit
        scfile = Path(tmp) / "sample.yaml"
        scfile.write_text(yaml.safe_dump(sc.model_dump(mode="json")))
        mlflow.pyfunc.save_model(
            path=str(dst), python_model=str(MODEL_CODE), artifacts={"unet": str(unet), "sample_config": str(scfile)},
            signature=signature(sc, image_shape), pip_requirements=["torch", "numpy", "pyyaml", "mlflow"],
        )
    return dst
