"""torchrun worker for tests/test_losses_ddp.py: each rank takes its slice of a DDP-held feature table.

The full features live in a DistributedDataParallel module replicated on every rank; rank r feeds its
slice to the loss, so after backward the table's gradient is what DDP hands the optimiser (the mean over
ranks). Usage: torchrun --nproc_per_node=2 tests/ddp_loss_worker.py OUT_DIR -> OUT_DIR/rank{r}.pt
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clearglass.losses import GroupedContrastiveLoss, MultiLevelGroupedLoss

WORLD, M, N, D, K = 2, 3, 4, 8, 2  # per rank: M groups of N pairs, K text negatives
CASES = {  # chunk: groups per tile of the tiled terms (2 does not divide a rank's M=3 groups, 4 not the W*M=6)
    "grouped": dict(kind="grouped", local_loss=False, chunk=None),
    "grouped_local": dict(kind="grouped", local_loss=True, chunk=None),
    "multilevel": dict(kind="multilevel", local_loss=False, chunk=None),
    "multilevel_local": dict(kind="multilevel", local_loss=True, chunk=None),
    "grouped_tiled": dict(kind="grouped", local_loss=False, chunk=4),
    "grouped_local_tiled": dict(kind="grouped", local_loss=True, chunk=2),
    "multilevel_local_tiled": dict(kind="multilevel", local_loss=True, chunk=1),
}


def full_batch() -> dict[str, torch.Tensor]:
    """The concatenated batch of all ranks: (W*M, N, D) features, (W*K, D) negatives, (W*M,) level-2 ids."""
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randn(WORLD * M, N, D, generator=g), "texts": torch.randn(WORLD * M, N, D, generator=g),
            "negatives": torch.randn(WORLD * K, D, generator=g),
            "level2": torch.tensor([0, 1, 2, 1, 0, 2])}  # level-2 groups span both ranks


def make_loss(case: str) -> nn.Module:
    """The loss of one case (pairwise outer + scaled_pairwise inner)."""
    spec = CASES[case]
    kw = dict(outer="pairwise", inner="scaled_pairwise", local_loss=spec["local_loss"], chunk=spec["chunk"])
    return GroupedContrastiveLoss(**kw) if spec["kind"] == "grouped" else MultiLevelGroupedLoss(0.5, 1.0, 0.3, **kw)


def run_loss(loss_fn: nn.Module, images, texts, negatives, level2) -> torch.Tensor:
    """The scalar loss of one case on (a slice of) the batch."""
    if isinstance(loss_fn, GroupedContrastiveLoss):
        return loss_fn(images, texts, text_negatives=negatives)["loss"]
    return loss_fn(images, texts, level2, text_negatives=negatives)["loss"]


class FeatureTable(nn.Module):
    """Holds the full features as parameters; forward returns one rank's slice of each."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor, negatives: torch.Tensor) -> None:
        super().__init__()
        self.images, self.texts, self.negatives = (nn.Parameter(t.clone()) for t in (images, texts, negatives))

    def forward(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rank `rank`'s (M, N, D), (M, N, D) and (K, D) slices."""
        return self.images.chunk(WORLD)[rank], self.texts.chunk(WORLD)[rank], self.negatives.chunk(WORLD)[rank]


def main(out_dir: Path) -> None:
    """Run every case on this rank and save loss values and DDP-averaged gradients."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    batch = full_batch()
    results = {}
    for case in CASES:
        table = nn.parallel.DistributedDataParallel(FeatureTable(batch["images"], batch["texts"], batch["negatives"]))
        images, texts, negatives = table(rank)
        loss = run_loss(make_loss(case), images, texts, negatives, batch["level2"].chunk(WORLD)[rank])
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[case] = {"loss": loss.detach(), "mean_loss": mean_loss / WORLD,
                         "grads": [p.grad for p in table.module.parameters()]}
    torch.save(results, out_dir / f"rank{rank}.pt")
    # every rank done with its collectives before any tears down; skipping interpreter finalisation avoids gloo's
    # rare SIGABRT ("terminate called without an active exception") while its threads still hold tensors
    del table, images, texts, negatives, loss
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
