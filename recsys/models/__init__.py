"""Sequential encoders behind one interface (:mod:`recsys.models.base`), one model per file:
SASRec (``sasrec``), BERT4Rec (``bert4rec``) and HSTU (``hstu``). Recipes pick them by name."""

from .base import MODELS, SequentialEncoder, build_model, model_config_class, register

__all__ = ["MODELS", "SequentialEncoder", "build_model", "model_config_class", "register"]
