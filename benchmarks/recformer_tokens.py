"""Cost of the token-level Recformer on CPU (recsys/models/recformer_tokens.py), measured, not estimated.

    python benchmarks/recformer_tokens.py [--dataset scientific] [--batch-size 16] [--steps 3]
                                          [--max-items 15] [--tokens-per-item 32] [--log-results]

Builds the model with the packaged MiniLM on the dataset's catalogue text, then times: re-encoding
the whole catalogue (stage 1 does this every epoch), ``--steps`` training steps (after one warm-up)
on real histories, and encoding users for evaluation. Prints the measured seconds and the epoch time
they add up to (one step per ``batch-size`` users, one re-encoding), next to the two-level variant's
measured epoch time when a result for it is given with --two-level-epoch-seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="scientific")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-items", type=int, default=15)
    p.add_argument("--tokens-per-item", type=int, default=32)
    p.add_argument("--encode-items", type=int, default=512, help="items encoded to time the re-encoding")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from recsys.config import DataConfig
    from recsys.data.cards import load_item_text
    from recsys.models.recformer_tokens import RecformerTokensConfig, build, prefix_batch, random_prefixes
    from recsys.train import prepare_data

    data = prepare_data(DataConfig(dataset=args.dataset), verbose=False)
    split, seq = data.split, data.split.data
    cfg = RecformerTokensConfig(
        tokens_per_item=args.tokens_per_item,
        max_items=args.max_items,
        max_tokens=min(512, 1 + args.max_items * args.tokens_per_item),
    )
    model = build(seq, load_item_text(args.dataset), cfg)
    tokens = (model.token_ids > 0).sum(1).float()
    print(
        f"{args.dataset}: {seq.num_users:,} users, {seq.num_items - 1:,} items; tokens per item: mean "
        f"{tokens[1:].mean():.1f}, cut at {cfg.tokens_per_item}; history: {cfg.max_items} items, <= {cfg.max_tokens} tokens; "
        f"torch threads {torch.get_num_threads()}"
    )
    # re-encoding the catalogue (timed on a slice, scaled by the catalogue size)
    n = min(args.encode_items, seq.num_items - 1)
    t = time.perf_counter()
    with torch.no_grad():
        model.eval()
        for start in range(1, n + 1, 256):
            model.encode_items(torch.arange(start, min(n + 1, start + 256)))
    encode_s = (time.perf_counter() - t) * (seq.num_items - 1) / n
    # training steps on real histories (one random prefix per user)
    rng = np.random.default_rng(0)
    users = np.flatnonzero(split.train_lengths >= 2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    step_s, history_tokens = [], []
    for step in range(args.steps + 1):
        rows = rng.choice(users, args.batch_size, replace=False)
        windows, targets = prefix_batch(seq, seq.seq_offsets[rows], random_prefixes(split, rows, rng), cfg.max_items)
        t = time.perf_counter()
        loss = model.loss(windows, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:  # the first step warms up
            step_s.append(time.perf_counter() - t)
            history_tokens.append(float(model.history_tokens(windows)[3].sum(1).float().mean()))
    per_step = float(np.mean(step_s))
    steps_per_epoch = int(np.ceil(len(users) / args.batch_size))
    t = time.perf_counter()
    with torch.no_grad():
        model.eval()
        model.user_vectors(windows)
    user_s = (time.perf_counter() - t) / args.batch_size
    epoch_s = steps_per_epoch * per_step + encode_s
    print("| what | measured | per epoch |")
    print("|---|---|---|")
    print(
        f"| training step, {args.batch_size} histories (mean {np.mean(history_tokens):.0f} tokens) | {per_step:.2f} s "
        f"| {steps_per_epoch:,} steps = {steps_per_epoch * per_step / 60:.1f} min |"
    )
    print(f"| re-encode the catalogue ({seq.num_items - 1:,} items) | {encode_s:.1f} s | once |")
    print(
        f"| encode one user for evaluation | {user_s * 1e3:.0f} ms | {len(split.test):,} users = {user_s * len(split.test) / 60:.1f} min |"
    )
    print(f"| stage-1 epoch, total | | {epoch_s / 60:.1f} min |")
    if args.log_results:
        from recsys.results import append_record, benchmark_command, make_record

        append_record(
            make_record(
                "recformer_tokens",
                command=benchmark_command("recformer_tokens", argv),
                dataset=args.dataset,
                batch_size=args.batch_size,
                max_items=cfg.max_items,
                tokens_per_item=cfg.tokens_per_item,
                mean_history_tokens=float(np.mean(history_tokens)),
                step_seconds=per_step,
                steps_per_epoch=steps_per_epoch,
                encode_catalogue_seconds=encode_s,
                user_encode_ms=user_s * 1e3,
                epoch_seconds=epoch_s,
                threads=torch.get_num_threads(),
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
