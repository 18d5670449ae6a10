"""Two-process (torchrun, gloo, CPU) grouped losses equal the single-process loss on the concatenated batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_loss_worker import CASES, WORLD, full_batch, make_loss, run_loss


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Results of every case from both ranks of one torchrun launch."""
    out = tmp_path_factory.mktemp("ddp")
    worker = Path(__file__).with_name("ddp_loss_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(worker), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_single_process_on_concatenated_batch(ranks, case):
    batch = full_batch()
    leaves = [batch[k].clone().requires_grad_() for k in ("images", "texts", "negatives")]
    loss = run_loss(make_loss(case), *leaves, batch["level2"])
    expected_grads = torch.autograd.grad(loss, leaves)
    for result in ranks:
        got = result[case]
        # without local_loss every rank holds the full-batch value; with it, the mean over ranks does
        torch.testing.assert_close(got["mean_loss"], loss.detach())
        if not CASES[case]["local_loss"]:
            torch.testing.assert_close(got["loss"], loss.detach())
        for name, a, b in zip(("images", "texts", "negatives"), got["grads"], expected_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{case} d/d{name}: {m}")
    if CASES[case]["local_loss"]:
        assert not torch.allclose(ranks[0][case]["loss"], ranks[1][case]["loss"])
