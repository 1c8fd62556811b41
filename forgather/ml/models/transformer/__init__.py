"""Self-contained Hugging Face remote-code package of the forgather causal LM.

The modules import only torch, transformers and each other (relatively), so copying them next
to a ``config.json`` lets ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
load the model where forgather is not installed (see ``forgather.ml.models.save``).
"""

from .configuration_forgather import ForgatherConfig
from .modeling_forgather import (
    ForgatherCausalLMOutput,
    ForgatherForCausalLM,
    ForgatherModel,
    ForgatherPreTrainedModel,
)

__all__ = [
    "ForgatherCausalLMOutput",
    "ForgatherConfig",
    "ForgatherForCausalLM",
    "ForgatherModel",
    "ForgatherPreTrainedModel",
]
