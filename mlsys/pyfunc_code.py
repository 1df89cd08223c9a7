"""The code MLflow runs to rebuild a registered causal LM (models-from-code, no pickled object):
`mlsys.models.stage_pyfunc` logs this file beside the model; nothing in the project imports it."""

from mlflow.models import set_model

from mlsys.models import CausalLMText

set_model(CausalLMText())
