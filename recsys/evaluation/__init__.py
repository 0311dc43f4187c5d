"""The one full-ranking evaluator every model goes through (:mod:`.full`), and how ranks are counted
(:mod:`.ranks`: exact counts, the cut-off path, sampled negatives)."""

from ..config import EvalConfig
from ..data.batching import iter_eval_batches
from .full import SCORE_BOUND, block_users, evaluate, item_ranker, ranks_in_kernel, repeat_target_rows, user_vectors
from .ranks import cutoff_ranks, exact_rank_counts, item_counts, popular_first, sample_negatives, sampled_ranks

__all__ = [
    "SCORE_BOUND",
    "EvalConfig",
    "block_users",
    "cutoff_ranks",
    "evaluate",
    "exact_rank_counts",
    "item_counts",
    "item_ranker",
    "iter_eval_batches",
    "popular_first",
    "ranks_in_kernel",
    "repeat_target_rows",
    "sample_negatives",
    "sampled_ranks",
    "user_vectors",
]
