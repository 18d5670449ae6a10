"""Commands `eval`, `compare` and `concepts`: score models on a test set, compare them, label your own images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.evaluate import CAPTION_SOURCES, FIELDS, TASKS, EvalConfig, ModelEncoder, evaluate_model, level_labels
from clearglass.formats import FORMATS, load_test_set
from clearglass.inference import score_concepts
from clearglass.io import check_writable, read_text, refuse_overwriting, write_json_atomic
from clearglass.magic.schema import ImageRoot, dataset_image_root, load_concepts, resolve_image_path
from clearglass.models import DEFAULT_MODEL, ModelBundle, load_model
from clearglass.gallery import gallery_predictions, sample_gallery_images, write_gallery
from clearglass.report import compare, headline_sections, write_report


def _load(spec: str, device: str) -> ModelBundle:
    """The model of a spec; an untrained one says so on stderr, since its scores are chance level."""
    try:
        bundle = load_model(spec, device=device)
    except ClearglassError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise ClearglassError(f"model {spec!r} could not be loaded: {e}") from None
    if bundle.untrained:
        print(f"warning: model {spec!r} is untrained (random weights): its scores are chance level; "
              f"{DEFAULT_MODEL!r} is the pretrained default", file=sys.stderr)
    return bundle


def _encoder(spec: str, args: argparse.Namespace) -> ModelEncoder:
    return ModelEncoder(_load(spec, args.device), batch_size=args.batch_size, device=args.device,
                        cache_dir=args.cache_dir)


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    _add_device_option(p)
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache embeddings here, keyed by model weights and data")


DEFAULTS = EvalConfig()  # the option defaults are the config's


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, type=Path, help="test set file(s)")
    p.add_argument("--format", default="magic", choices=FORMATS, help="test set layout (default magic)")
    p.add_argument("--images", type=Path, default=None, help="image root (default: the one `build` recorded beside the data file, else its folder)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept image ids that are absolute paths or lead out of the image root")
    p.add_argument("--k", type=int, default=DEFAULTS.k, help=f"candidates per recognition item (default {DEFAULTS.k})")
    p.add_argument("--fields", nargs="+", choices=FIELDS, default=DEFAULTS.fields,
                   help="recognition fields (default: every field the data has)")
    p.add_argument("--levels", nargs="+", type=int, default=DEFAULTS.levels,
                   help="zero-shot levels (default: every level with at least 2 labels)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=DEFAULTS.tasks,
                   help=f"tasks to run (default: {' '.join(DEFAULTS.tasks)})")
    _add_template_option(p)
    p.add_argument("--retrieval-captions", default=DEFAULTS.retrieval_captions, choices=CAPTION_SOURCES,
                   help=f"captions retrieval searches (default {DEFAULTS.retrieval_captions})")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"item and bootstrap seed (default {DEFAULTS.seed})")
    p.add_argument("--n-boot", type=int, default=DEFAULTS.n_boot,
                   help=f"bootstrap resamples (default {DEFAULTS.n_boot})")
    _add_model_options(p)


def _add_template_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default=DEFAULTS.template,
                   help=f"prompt for concept labels (default {DEFAULTS.template!r})")


def _config(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(k=args.k, fields=args.fields, levels=args.levels, template=args.template, seed=args.seed,
                      n_boot=args.n_boot, tasks=args.tasks, retrieval_captions=args.retrieval_captions)


def _test_set(args: argparse.Namespace) -> tuple[list, ImageRoot]:
    concepts = load_test_set(args.data, args.format)
    root = ImageRoot(args.images if args.images is not None else dataset_image_root(args.data[0]),
                     args.allow_outside_root)
    missing = [im.image for c in concepts for im in c.test_images if not resolve_image_path(root, im.image).is_file()]
    if missing:
        raise ClearglassError(f"{args.data[0]}: {len(missing)} test images not found under the image root "
                              f"{root.folder} (first: {missing[0]!r}); name the folder they are in with --images DIR")
    return concepts, root


def _evaluate(spec: str, args: argparse.Namespace, encoder: ModelEncoder, test_set: tuple[list, ImageRoot]) -> dict:
    concepts, root = test_set
    data = " ".join(str(p) for p in args.data)
    return evaluate_model(encoder, concepts, root, _config(args), model=spec, data=data)


def run_eval(args: argparse.Namespace) -> int:
    """`clearglass eval`: one model's results JSON."""
    check_writable(args.out, "results JSON")
    refuse_overwriting(args.out, {f"--data file {p}": p for p in args.data} | {"--model checkpoint": args.model})
    results = _evaluate(args.model, args, _encoder(args.model, args), _test_set(args))
    write_json_atomic(results, args.out)
    for what, why in results["skipped"].items():
        print(f"skipped {what}: {why}")
    for r in results["metrics"]:
        print(f"{r['task']}/{r['subset']}/{r['metric']}: {r['value']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] n={r['n']}")
    print(f"wrote {args.out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """`clearglass compare`: several models side by side, paired differences vs the first, report and plots."""
    if len(set(args.models)) != len(args.models):
        raise ClearglassError(f"--models lists a model twice: {args.models}")
    check_writable(args.out, "comparison report", folder=True)
    concepts, root = test_set = _test_set(args)
    items = sample_gallery_images({"test": concepts}, seed=args.seed)
    labels = {lv: found for lv in (1, 2) if (found := level_labels(concepts, lv))}
    results, predictions = {}, {}
    for spec in args.models:  # one model in memory at a time
        encoder = _encoder(spec, args)
        results[spec] = _evaluate(spec, args, encoder, test_set)
        if items and labels:
            predictions[spec] = gallery_predictions(encoder, items, root, labels, args.template)
    comparison = compare(results)
    paths = write_report(comparison, args.out, title=args.title)
    if predictions:
        paths["gallery"] = write_gallery(args.out / "report.html", args.title, headline_sections(comparison), items,
                                         predictions, root)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _read_labels(path: Path) -> list[str]:
    labels = [line.strip() for line in read_text(path, "labels file").splitlines() if line.strip()]
    if len(labels) < 2:
        raise ClearglassError(f"{path}: expected at least 2 labels, one per line; found {len(labels)}")
    return list(dict.fromkeys(labels))


def run_concepts(args: argparse.Namespace) -> int:
    """`clearglass concepts`: rank concept labels for your own images, per level or from a labels file."""
    if (args.data is None) == (args.labels is None):
        raise ClearglassError("give either --data MAGIC.json (labels per level) or --labels FILE (one label a line)")
    if args.labels is not None:
        label_sets = {"labels": _read_labels(args.labels)}
    else:
        concepts = load_concepts(args.data)
        label_sets = {f"level{lv}": level_labels(concepts, lv) for lv in args.levels}
        for name, labels in label_sets.items():
            if not labels:
                raise ClearglassError(f"{args.data}: no test image has a {name} value to use as a label")
    bundle = _load(args.model, args.device)
    out: dict[str, dict[str, list]] = {str(p): {} for p in args.images}
    for name, labels in label_sets.items():
        for path in args.images:
            ranked = score_concepts(bundle, path, labels, args.template)[:args.top]
            out[str(path)][name] = [{"label": label, "score": score} for label, score in ranked]
    if args.json:
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0
    for path, per_set in out.items():
        print(path)
        for name, ranked in per_set.items():
            print(f"  {name}: " + ", ".join(f"{x['label']} ({x['score']:.4f})" for x in ranked))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval`, `compare` and `concepts` commands."""
    p = subparsers.add_parser(
        "eval", help="evaluate one model on a test set; write a results JSON",
        description="Score one model on a test set: concept recognition (K-way), zero-shot classification per "
                    "level, caption retrieval (and HierarCaps metrics), each with a bootstrap interval.",
        epilog="example: clearglass eval --model runs/cg/checkpoints/step_000500.pt --data data/emoji/magic.json "
               "--out results.json")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model spec: a pretrained tag, clearglass:scratch (untrained), a checkpoint, "
                        f"open_clip:NAME:TAG, hf:DIR (default {DEFAULT_MODEL}, the pretrained base)")
    p.add_argument("--out", required=True, type=Path, help="results JSON to write")
    _add_eval_options(p)
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "compare", help="evaluate several models on one test set; write JSON, report.md, plots",
        description="Score several models on the very same test items and report paired differences against the "
                    "first: results.json, report.md and plots in the output folder.",
        epilog="example: clearglass compare --models default runs/cg/checkpoints/step_000500.pt "
               "--data data/emoji/magic.json --out reports/cg")
    p.add_argument("--models", nargs="+", required=True, help="model specs; differences are against the first")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--title", default="clearglass model comparison", help="report title")
    _add_eval_options(p)
    p.set_defaults(func=run_compare)

    p = subparsers.add_parser(
        "concepts", help="rank concept labels for your own images",
        description="Rank concept labels for your own image files: the labels of a MAGIC file's levels (--data), "
                    "or your own list (--labels, one a line).",
        epilog="example: clearglass concepts photo.jpg --labels labels.txt --model runs/cg/checkpoints/step_000500.pt")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL}, the pretrained base)")
    p.add_argument("--data", type=Path, default=None, help="MAGIC JSON whose test images' level values are the labels")
    p.add_argument("--levels", nargs="+", type=int, default=[1, 2, 3, 4], help="levels to rank with --data")
    p.add_argument("--labels", type=Path, default=None, help="text file, one label a line")
    _add_template_option(p)
    p.add_argument("--top", type=int, default=5, help="labels shown per image and level (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_device_option(p)
    p.set_defaults(func=run_concepts)
