"""Commands `eval`, `compare` and `concepts`: score models on a test set, compare them, label your own images."""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import textwrap
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.evaluate import CAPTION_SOURCES, FIELDS, TASKS, EvalConfig, ModelEncoder, evaluate_model, level_labels
from clearglass.formats import FORMATS, load_test_set
from clearglass.gallery import SCRIPT as GALLERY_SCRIPT
from clearglass.gallery import STYLE as GALLERY_STYLE
from clearglass.gallery import (
    GalleryItem,
    Trials,
    gallery_html,
    gallery_picks,
    sample_gallery,
    split_trials,
    table_hits,
)
from clearglass.inference import score_concepts
from clearglass.io import check_writable, read_text, refuse_overwriting, resolve_device, write_json_atomic
from clearglass.magic.schema import (
    ImageRoot,
    dataset_image_root,
    escaped,
    load_concepts,
    resolve_image_path,
    unsafe_chars,
)
from clearglass.model_sets import ModelSet, model_set_names
from clearglass.models import DEFAULT_MODEL, ModelBundle, load_model
from clearglass.page import markdown_html, write_page
from clearglass.report import compare, md_code, md_text, write_report
from clearglass.results import MetricKey

GALLERY_PICTURES = 48  # test pictures in a comparison's report.html
NAME = re.compile(r"[A-Za-z0-9_.+-]+")  # a report name: no '/', ':' or '=' (those belong to specs)
MARKUP = re.compile(r"[<>&|`]")  # characters report.md (Markdown with inline HTML) would read as markup


def _load(spec: str, device: str) -> ModelBundle:
    """The model of a spec; an untrained one says so on stderr, since its scores are chance level."""
    device = resolve_device(device)  # before loading: a missing GPU is named as such
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
    if args.batch_size < 1:
        raise ClearglassError(f"--batch-size {args.batch_size}: expected an encoder batch size >= 1")
    return ModelEncoder(_load(spec, args.device), batch_size=args.batch_size, device=resolve_device(args.device),
                        cache_dir=args.cache_dir)


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device (default auto: CUDA when available, else the CPU)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    _add_device_option(p)
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache embeddings here, keyed by model weights and data")


DEFAULTS = EvalConfig()  # the option defaults are the config's


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, type=Path, help="test set file(s)")
    p.add_argument("--format", default="magic", choices=FORMATS, help="test set layout (default magic)")
    p.add_argument("--images", type=Path, default=None,
                   help="image root (default: the one `build` recorded beside the data file, else its folder)")
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
    files = [p.resolve() for p in args.data]
    repeated = next((p for k, p in enumerate(args.data) if files[k] in files[:k]), None)
    if repeated is not None:
        raise ClearglassError(f"--data {repeated}: given twice; its items would be counted twice")
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
        print(f"{MetricKey.of(r)}: {r['value']:.4f} "
              f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}] n={r['n']}")
    print(f"wrote {args.out}")
    return 0


def _named_models(entries: list[str]) -> dict[str, str]:
    """``--models`` entries as report name -> model spec: NAME=SPEC, a bare SPEC (named by itself) or @SET (the
    models of a shipped model set, in its order)."""
    models: dict[str, str] = {}
    for entry in entries:
        if entry.startswith("@"):
            if entry[1:] not in model_set_names():
                raise ClearglassError(f"--models {entry}: no such model set; expected one of "
                                      f"{['@' + n for n in model_set_names()]}")
            named = list(ModelSet.load(entry[1:]).models.items())
        else:
            name, sep, spec = entry.partition("=")
            named = [(name, spec)] if sep and NAME.fullmatch(name) else [(entry, entry)]
        for name, spec in named:
            if not spec:
                raise ClearglassError(f"--models {entry}: expected NAME=SPEC with a model spec after '='")
            if MARKUP.search(name + spec) or unsafe_chars(name + spec):
                raise ClearglassError(f"--models {escaped(entry)}: holds a character report.md would read as markup "
                                      "(< > & | `) or a control, bidi or zero-width character; name the model "
                                      "NAME=SPEC with plain characters")
            if name in models:
                raise ClearglassError(f"--models names {name!r} twice: give each model its own name (NAME=SPEC)")
            models[name] = spec
    return models


def _pair(text: str, names: list[str]) -> tuple[str, str]:
    """'A-B' -> (A, B): model A minus baseline B, split at the one '-' that leaves two model names."""
    splits = [(text[:i], text[i + 1:]) for i, c in enumerate(text) if c == "-"]
    found = [(a, b) for a, b in splits if a in names and b in names and a != b]
    if len(found) != 1:
        why = "is ambiguous" if found else "names no two different models"
        raise ClearglassError(f"--pairs {text}: {why}; expected MODEL-BASELINE of the names {names}")
    return found[0]


def _pairs_of(args: argparse.Namespace, names: list[str]) -> list[tuple[str, str]]:
    """The (model, baseline) pairs to difference: --pairs, or each model against --baseline (default the first)."""
    if args.pairs:
        return [_pair(text, names) for text in args.pairs]
    baseline = args.baseline if args.baseline is not None else names[0]
    if baseline not in names:
        raise ClearglassError(f"--baseline {baseline}: not a name of --models; expected one of {names}")
    return [(name, baseline) for name in names if name != baseline]


def run_compare(args: argparse.Namespace) -> int:
    """`clearglass compare`: several models side by side, paired differences (against a baseline or in the pairs
    given), report and plots; the models load one at a time."""
    import torch

    models = _named_models(args.models)
    names = list(models)
    pairs = _pairs_of(args, names)
    check_writable(args.out, "comparison report", folder=True)
    concepts, root = test_set = _test_set(args)
    results, picks = {}, {}
    trials: Trials | None = None
    items: list[GalleryItem] = []
    for name, spec in models.items():  # one model in memory at a time: load, evaluate, free
        encoder = _encoder(spec, args)
        results[name] = _evaluate(spec, args, encoder, test_set)
        if trials is None:  # the recognition items every model's results were scored on
            trials = split_trials("test", concepts, results[name]["config"])
            items = sample_gallery([trials], GALLERY_PICTURES, args.seed)
        if items:
            picks[name] = gallery_picks(encoder, items, {"test": trials}, root)
        del encoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    comparison = compare(results, pairs=pairs)
    renamed = {name: spec for name, spec in models.items() if name != spec}
    intro = "Models: " + "; ".join(f"{md_text(name)} = {md_code(spec)}" for name, spec in renamed.items()) + "." \
        if renamed else ""  # Markdown: report.md takes it as written
    paths = write_report(comparison, args.out, title=args.title, intro=intro)
    body = markdown_html(read_text(paths["markdown"], "report"), args.out)
    if picks:
        hits = {"test": {name: table_hits(trials, res) for name, res in results.items()}}
        body += gallery_html(items, picks, {"test": trials}, hits, {"test": "test set"}, root)
    paths["gallery"] = write_page(args.out / "report.html", args.title, body, GALLERY_STYLE, GALLERY_SCRIPT)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _model_sets_help() -> str:
    """The shipped model sets for --help: names, specs and what each set lacks."""
    lines = []
    for set_name in model_set_names():
        model_set = ModelSet.load(set_name)
        lines.append(f"  @{set_name}: {model_set.description}:")
        lines += [f"    {name} = {spec}" for name, spec in model_set.models.items()]
        lines += [f"    not included: {name} ({why})" for name, why in model_set.unavailable.items()]
    return "model sets (--models @NAME; each model loads through open_clip's own download, one at a time):\n" + \
        "\n".join(lines)


def _read_labels(path: Path) -> list[str]:
    """The labels of a labels file, one a line (stripped, blank lines skipped, repeats dropped), at least 2; a label
    holding a control, bidi or zero-width character is an error naming its line."""
    labels = []
    for number, line in enumerate(read_text(path, "labels file").splitlines(), start=1):
        label = line.strip()
        if unsafe_chars(label):
            raise ClearglassError(f"{path}:{number}: the label holds control, bidi or zero-width characters "
                                  f"{unsafe_chars(label)}; expected plain text")
        if label:
            labels.append(label)
    labels = list(dict.fromkeys(labels))
    if len(labels) < 2:
        raise ClearglassError(f"{path}: expected at least 2 labels, one per line (a repeat counts once); found "
                              f"{len(labels)}")
    return labels


def run_concepts(args: argparse.Namespace) -> int:
    """`clearglass concepts`: rank concept labels for your own images, per level or from a labels file."""
    if (args.data is None) == (args.labels is None):
        raise ClearglassError("give either --data MAGIC.json (labels per level) or --labels FILE (one label a line)")
    if args.top < 1:
        raise ClearglassError(f"--top {args.top}: expected the number of labels to show per image and level, >= 1")
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
        print(json.dumps(out, indent=1))  # ASCII: no character of the data reaches the terminal raw
        return 0
    for path, per_set in out.items():
        print(escaped(path))
        for name, ranked in per_set.items():
            print(f"  {name}: " + ", ".join(f"{escaped(x['label'])} ({x['score']:.4f})" for x in ranked))
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
        description=textwrap.fill("Score several models on the very same test items and report paired differences "
                                  "against a baseline (default the first model) or in the pairs given: results.json, "
                                  "report.md and plots in the output folder. Models are named NAME=SPEC; the names "
                                  "label the report's columns.", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  clearglass compare --models base=clearglass-mini cg=runs/cg/checkpoints/step_000500.pt "
               "--data data/emoji/magic.json --out reports/cg\n  clearglass compare --models "
               "cg=runs/cg/checkpoints/step_000500.pt @paper --baseline clip_b32 --data data/emoji/magic.json "
               "--out reports/paper\n\n" + _model_sets_help())
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=SPEC|SPEC|@SET",
                   help="models to score: NAME=SPEC, a bare SPEC (named by itself), or @SET (see below)")
    against = p.add_mutually_exclusive_group()
    against.add_argument("--baseline", default=None, metavar="NAME",
                         help="the model every other is differenced against (default: the first)")
    against.add_argument("--pairs", nargs="+", default=None, metavar="MODEL-BASELINE",
                         help="the paired differences to report instead, e.g. cg-base cg-clip_b32")
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
