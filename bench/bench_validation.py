"""What validation during training costs at the demo's setting: one CLEAR GLASS fine-tune of the default demo config
(its data, base, steps, ``validation_every`` and the setting its search chose), timing the validation passes against
the whole run in that run.

Prints ``name: value`` lines; target: ``validation_share`` <= 0.10.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline: the caller's choice

from clearglass.experiments.demo.config import DemoConfig, read_search_record  # noqa: E402
from clearglass.experiments.demo.data import build_demo_data  # noqa: E402
from clearglass.experiments.demo.run import chosen_for  # noqa: E402
from clearglass.train import train  # noqa: E402


def main() -> None:
    """Train the method once with validation and print the share of the run spent validating."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="demo config (default: default)")
    parser.add_argument("--model", default=None, help="demo model (default: the config's method)")
    args = parser.parse_args()
    config = DemoConfig.load(args.config)
    name = args.model or config.method
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        paths, _ = build_demo_data(out, config, progress=False)
        setting, _ = chosen_for(read_search_record(config), config.models[name].family)
        train_config = config.train_config(name, setting, str(paths["train"]), out, 0)
        start = time.perf_counter()
        result = train(train_config)
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in Path(result["metrics_path"]).read_text().splitlines()]
    passes = [r["val/seconds"] for r in rows if "val/seconds" in r]
    print(f"model: {name}")
    print(f"steps: {result['step']}")
    print(f"validation_passes: {len(passes)}")
    print(f"validation_seconds: {sum(passes):.2f}")
    print(f"run_seconds: {total:.2f}")
    print(f"validation_share: {sum(passes) / total:.3f}")


if __name__ == "__main__":
    main()
