"""recsys: sequential recommendation — real data in, full-ranking metrics out.

The Python API (``fit``, ``load``, ``recipes``, ``from_frame``; a trained ``Run`` recommends by user) lives in :mod:`recsys.api`; it is imported
lazily so ``import recsys`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["Run", "from_frame", "fit", "load", "recipes", "__version__"]


def __getattr__(name: str):
    if name in ("from_frame", "fit", "load", "recipes", "Run", "Recommender"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
