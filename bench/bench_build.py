"""Benchmark: images labelled per second by the `llm` labeler at concurrency 1 and 16, side by side.

The endpoint is the tests' local chat-completions server (clearglass_testing/fake_llm_server.py) with a fixed latency
per request, standing in for a real one; the labeler talks to it through the openai client with its default answer
layout
(auto: the server accepts the JSON schema); the cache is off, so every image costs one request.

    .venv/bin/python bench/bench_build.py [--images 64] [--latency-ms 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clearglass.magic.labelers import ConceptLabel
from clearglass.magic.labelers.llm import LLMLabeler
from clearglass.magic.sources import SourceItem
from clearglass_testing.fake_llm_server import FakeLLMServer

TOPIC_WORDS = ("pizza", "baseball", "giraffe", "street")


def images_per_second(base_url: str, items: list[SourceItem], concurrency: int) -> float:
    """Label every item once (no cache) and return items / wall seconds; every item must get a label."""
    labeler = LLMLabeler(base_url=base_url, model="bench", concurrency=concurrency, progress=False)
    try:
        start = time.perf_counter()
        results = labeler.label_many(items)
        seconds = time.perf_counter() - start
    finally:
        labeler.close()
    failed = [r for r in results if not isinstance(r, ConceptLabel)]
    if failed:
        raise SystemExit(f"benchmark run at concurrency {concurrency} had {len(failed)} failures: {failed[0]}")
    return len(items) / seconds


def main() -> None:
    """Print `name: value` lines: throughput at concurrency 1 and N, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    items = [
        SourceItem(f"{i:012d}", Path(f"{i:012d}.jpg"), [f"A {TOPIC_WORDS[i % 4]} photo number {i}."])
        for i in range(args.images)
    ]
    with FakeLLMServer(latency_s=args.latency_ms / 1000) as server:
        serial = images_per_second(server.base_url, items, 1)
        parallel = images_per_second(server.base_url, items, args.concurrency)
        max_in_flight = server.max_in_flight
    print(f"images: {args.images}")
    print(f"latency_ms: {args.latency_ms:g}")
    print(f"c1_images_per_s: {serial:.1f}")
    print(f"c{args.concurrency}_images_per_s: {parallel:.1f}")
    print(f"speedup_c{args.concurrency}_over_c1: {parallel / serial:.2f}")
    print(f"server_max_in_flight: {max_in_flight}")


if __name__ == "__main__":
    main()
