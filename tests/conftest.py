"""Shared fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline mode is the caller's choice: the tests make it (no hub here)

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# end-to-end runs of the real entry points (a demo, a pretraining, torchrun, Chromium, kill and resume): the slow
# tier, which `make test-fast` (pytest -m "not slow") skips and `make test` runs
SLOW_FILES = {"test_experiments_demo_run.py", "test_cli_pretrain.py", "test_train_ddp.py", "test_losses_ddp.py",
              "test_train_interrupt.py", "test_experiments_demo_report.py", "test_cli_walkthrough.py",
              "test_ablation.py", "test_pretrained.py", "test_bench_gpu.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of the SLOW_FILES as slow."""
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (subprocesses get the same via OMP_NUM_THREADS); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
