#!/usr/bin/env bash
# Every RecBole 1.2.1 comparison of issue 8, one after the other (run it alone: each side's throughput
# is timed), results appended to benchmarks/results/:
#   bash benchmarks/peer_all.sh [THREADS]
# SASRec on Beauty (one whole epoch on both sides, so NDCG@10 compares at about the same targets):
# fp32 and bf16 logit GEMMs on our side at RecBole's learning rate 0.001, then bf16 at 0.004 on our
# side (a batch of 128 sequences is ~5.7x the targets of RecBole's 128 prefixes, so one epoch is
# ~5.7x fewer updates) against RecBole at 0.001 and at 0.004 as well; BERT4Rec on Beauty, fp32 and
# bf16: ours one epoch, then RecBole stopped once it has trained as many targets (its epoch, ~30 min
# here, holds ~5x as many: every prefix sample is masked); on the partial ML-1M file (length 200):
# SASRec with RecBole stopped after 40 batches (throughput), SASRec at equal targets with our batch of
# 2 sequences (~210 targets per update, about RecBole's 128; a batch of 128 sequences would make ~100x
# fewer updates), BERT4Rec at equal targets (both sides ~25 updates). The ML-1M SASRec equal-target
# comparison alone took 19 minutes on 2 cores (RecBole trains ~290 targets/s there). SASRec on S3-Rec's
# Beauty file, one epoch each: our lr 0.008 was picked on validation NDCG@10 after one epoch (of lr 0.002,
# 0.004, 0.008 x batch 32, 64, 128 sequences), against RecBole at 0.001 and at 0.008.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
py="${PYTHON:-.venv/bin/python}"
for spec in \
    "--dataset beauty --epochs 1 --ce-dtype float32" \
    "--dataset beauty --epochs 1" \
    "--dataset beauty --epochs 1 --lr 0.004" \
    "--dataset beauty --epochs 1 --lr 0.004 --recbole-lr 0.004" \
    "--model bert4rec --dataset beauty --epochs 1 --equal-targets --ce-dtype float32" \
    "--model bert4rec --dataset beauty --epochs 1 --equal-targets" \
    "--dataset ml-1m --recbole-batches 40" \
    "--dataset ml-1m --equal-targets --our-batch-size 2" \
    "--model bert4rec --dataset ml-1m --equal-targets" \
    "--dataset s3rec-beauty --epochs 1 --lr 0.008" \
    "--dataset s3rec-beauty --epochs 1 --lr 0.008 --recbole-lr 0.008"; do
    # shellcheck disable=SC2086
    "$py" benchmarks/peer_recbole.py $spec --threads "$threads" --log-results
done
