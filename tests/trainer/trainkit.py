"""Shared helpers of the trainer tests: fast distill settings and random token batches."""

import torch

from phm.trainer.data import TokenBatches

FAST = dict(progress=False, log_every=1, calib_batches=2, warmup_steps=2)


def random_batches(seed=0, count=48, batch_size=8) -> TokenBatches:
    """`count` random token sequences of 6–15 tokens (ids 3..249, 0 = padding) in batches."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, 250, (int(torch.randint(6, 16, (), generator=gen)),), generator=gen).tolist()
            for _ in range(count)]
    return TokenBatches(seqs, batch_size, pad_id=0, seed=seed)
