"""MLflow models-from-code entry point of the UNet sampler model (gdm.tracking.pyfunc)."""

from mlflow.models import set_model

from gdm.tracking.pyfunc import GdmSampler

set_model(GdmSampler())
