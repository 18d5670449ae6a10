"""``clearglass demo``: the paper's experiment, offline on a CPU. Both fine-tunes start from the pretrained base
(``clearglass-mini``) with the same budget, seeds and data order: (a) the CLIP loss on random pairs, (b) CLEAR GLASS
on groups, each with the settings and WiSE-FT weight its family's equal-effort validation search chose; plus both
with the text projection frozen (only the image tower learns). The base itself is scored zero-shot. Every model is
evaluated on seen, held-out and cross-style concepts, on caption retrieval, on the image-only diagnostic and on the
base's own held-out item names (retention)."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from clearglass.base_to_novel import harmonic_comparison
from clearglass.checkpoints import extra_state_path, metadata_path, save_checkpoint
from clearglass.errors import ClearglassError
from clearglass.experiments.demo.config import DemoConfig, read_search_record
from clearglass.experiments.demo.data import build_demo_data
from clearglass.experiments.demo.evaluation import DemoEvaluator
from clearglass.experiments.demo.report import write_demo_report
from clearglass.experiments.seeds import merge_seeds
from clearglass.interpolate import interpolate
from clearglass.io import write_json_atomic
from clearglass.models import load_model
from clearglass.report import compare
from clearglass.train import train

BASE = "base"
HARMONIC = "harmonic_mean"  # the comparisons' pseudo-subset: base (test_seen) and novel (test_novel) concepts
HARMONIC_KEYS = [("recognition", f"concept_level{lv}", "i2t_R@1") for lv in (1, 2)]


def chosen_for(record: dict | None, family: str) -> tuple[dict, float]:
    """The search record's chosen train setting and WiSE-FT weight for a family (none: no change, w = 1)."""
    if record is None:
        return {}, 1.0
    chosen = record["chosen"][family]
    return chosen["setting"], float(chosen["wise_ft"])


def effective_settings(config: DemoConfig, record: dict | None) -> dict[str, dict]:
    """Per model: its family, the train settings it runs with (its own, then the search's choice for its family)
    and its WiSE-FT weight."""
    settings = {}
    for name, model in config.models.items():
        chosen, w = chosen_for(record, model.family)
        settings[name] = {"family": model.family, "train": config.model_settings(name, chosen), "wise_ft": w}
    return settings


def train_model(config: DemoConfig, name: str, record: dict | None, data: Path, out: Path, seed: int) -> dict:
    """Train one demo model; returns train()'s result plus the wall time. Its resume state is dropped once the run
    has finished (nothing resumes a finished demo run; it would double the output folder)."""
    setting, _ = chosen_for(record, config.models[name].family)
    train_config = config.train_config(name, setting, str(data), out, seed)
    start = time.perf_counter()
    result = train(train_config, overwrite=True)  # a demo run again into its folder trains afresh
    extra_state_path(result["checkpoint"]).unlink(missing_ok=True)
    return {**result, "seconds": time.perf_counter() - start}


def final_model(config: DemoConfig, name: str, record: dict | None, checkpoint: str, path: Path) -> Path:
    """The model the demo reports for ``name``: its fine-tune, interpolated with the base at the chosen WiSE-FT
    weight (w < 1), written (slim) at ``path``, the run's own weight file then removed unless
    ``config.keep_fine_tunes``; w = 1 links the run's checkpoint files there instead."""
    _, w = chosen_for(record, config.models[name].family)
    path.parent.mkdir(parents=True, exist_ok=True)
    if w == 1.0:
        for src, dst in ((Path(checkpoint), path), (metadata_path(checkpoint), metadata_path(path))):
            dst.unlink(missing_ok=True)
            os.link(src, dst)
        return path
    bundle = interpolate(load_model(config.base), load_model(checkpoint), w)
    wise_ft = {"base": config.base, "fine_tuned": checkpoint, "w": w, "fine_tuned_kept": config.keep_fine_tunes}
    saved = save_checkpoint(bundle, path, train_config={"wise_ft": wise_ft}, dataset_sha256="", metrics={})
    if not config.keep_fine_tunes:
        Path(checkpoint).unlink()
    return saved


def compare_models(per_model: dict[str, list[dict[str, dict]]], baseline: str, method: str, seeds: int
                   ) -> dict[str, dict]:
    """Per subset: every model's results (several seeds merged per item; the base, trained by none, enters the
    same way so all rows compare alike), the paired differences against the baseline, and the method's and the
    baseline's differences against the base (``vs_base``)."""
    order = [BASE, baseline, method] + [m for m in per_model if m not in (BASE, baseline, method)]
    comparisons = {}
    for subset in per_model[BASE][0]:
        by_model = {m: (merge_seeds([r[subset] for r in per_model[m]]) if seeds > 1 else per_model[m][0][subset])
                    for m in order}
        ordered = {baseline: by_model[baseline], **{m: r for m, r in by_model.items() if m != baseline}}
        comparisons[subset] = {**compare(ordered), "models": order, "results": {m: by_model[m] for m in order},
                               "vs_base": compare({BASE: by_model[BASE], method: by_model[method],
                                                   baseline: by_model[baseline]})["differences"]}
    if {"test_seen", "test_novel"} <= set(comparisons):
        comparisons[HARMONIC] = harmonic_subset(comparisons["test_seen"], comparisons["test_novel"], baseline, method)
    return comparisons


def harmonic_subset(base: dict, novel: dict, baseline: str, method: str) -> dict:
    """The harmonic mean of base- and novel-concept recognition (levels 1 and 2, image->text R@1) of every model,
    shaped like the other subsets' comparisons: differences against the baseline, and ``vs_base``."""
    models, config = base["models"], base["results"][baseline]["config"]
    pairs = [(m, baseline) for m in models if m != baseline] + [(method, BASE), (baseline, BASE)]
    hm = harmonic_comparison(base["results"], novel["results"], HARMONIC_KEYS, pairs, config["n_boot"],
                             config["seed"], config["ci_level"])
    vs_base = [d for d in hm["differences"] if d["baseline"] == BASE]
    return {"models": models, "results": {m: hm["results"][m] for m in models}, "vs_base": vs_base,
            "differences": [d for d in hm["differences"] if d["baseline"] == baseline]}


def chosen_models(config: DemoConfig, only: list[str] | None) -> list[str]:
    """The models of the config to train: all, or ``only`` those (which must name the baseline and the method)."""
    if only is None:
        return list(config.models)
    unknown = [m for m in only if m not in config.models]
    missing = [m for m in (config.baseline, config.method) if m not in only]
    if unknown or missing:
        raise ClearglassError(f"--only {' '.join(only)}: " + (f"no model {unknown} in the config (it has "
                              f"{list(config.models)})" if unknown else f"must include the baseline and the method "
                                                                        f"{missing}"))
    return list(dict.fromkeys(only))


def run_demo(out: str | os.PathLike, seeds: int = 1, config_name: str = "default", progress: bool = True,
             only: list[str] | None = None) -> dict:
    """Build, train, evaluate and report (every model of the config, or ``only`` those); returns the summary
    written to ``out/results.json``."""
    if seeds < 1:
        raise ClearglassError(f"seeds = {seeds}: expected at least 1")
    config = DemoConfig.load(config_name)
    names = chosen_models(config, only)
    record = read_search_record(config)
    out = Path(out)
    if out.is_file():
        raise ClearglassError(f"--out {out}: is a file; expected an output folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    paths, data_summary = build_demo_data(out, config, progress)
    evaluator = DemoEvaluator(paths, config.eval.k, config.eval.n_boot, config.eval.seed)
    per_model: dict[str, list[dict[str, dict]]] = defaultdict(list)
    training: dict[str, list[dict]] = defaultdict(list)
    finals: dict[str, list[str]] = defaultdict(list)
    base = load_model(config.base)
    untrained = base.untrained
    if untrained:
        print(f"warning: the base {config.base!r} is untrained (random weights): its scores are chance level",
              file=sys.stderr)
    per_model[BASE].append(evaluator.evaluate(base, BASE))
    del base
    seed_list = list(range(config.first_seed, config.first_seed + seeds))
    for seed in seed_list:
        for name in names:
            result = train_model(config, name, record, paths["train"], out, seed)
            training[name].append({k: result[k] for k in ("step", "metrics", "seconds", "checkpoint", "metrics_path")})
            final = final_model(config, name, record, result["checkpoint"],
                                out / "checkpoints" / f"{name}-seed{seed}.pt")
            finals[name].append(str(final))
            per_model[name].append(evaluator.evaluate(load_model(str(final)), name))
    comparisons = compare_models(per_model, config.baseline, config.method, seeds)
    summary = {
        "command": f"clearglass demo --out {out} --seeds {seeds}" + (f" --config {config_name}"
                                                                     if config_name != "default" else "")
                   + (f" --only {' '.join(names)}" if only else ""),
        "config_name": config_name, "config": config.to_dict(), "base_untrained": untrained, "seeds": seed_list,
        "data": data_summary,
        "models": {m: o for m, o in effective_settings(config, record).items() if m in names}, "training": training,
        "checkpoints": finals, "search": record, "comparisons": comparisons,
        "seconds": time.perf_counter() - start,
    }
    summary.update(write_demo_report(out, summary, evaluator))
    write_json_atomic(summary, out / "results.json")
    return summary
