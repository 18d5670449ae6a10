"""`clearglass interpolate`: WiSE-FT weight-space interpolation of a fine-tuned model with its base,
theta = (1 - w) * base + w * fine_tuned, written as a checkpoint that every command accepts as a model spec.

Example:
  clearglass interpolate --base clearglass-mini --fine-tuned runs/cg/checkpoints/step_000300.pt --w 0.5 \\
      --out cg-w0.5.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `interpolate` command."""
    p = subparsers.add_parser("interpolate", help="WiSE-FT: interpolate a fine-tune with its base (a new checkpoint)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="model spec of the base (e.g. clearglass-mini)")
    p.add_argument("--fine-tuned", required=True, help="model spec of the fine-tune (a checkpoint)")
    p.add_argument("--w", type=float, required=True, help="weight of the fine-tune, 0 (base) .. 1 (fine-tune)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint .pt to write (metadata JSON beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load both, interpolate, save, print the path."""
    from clearglass.checkpoints import extra_state_path, metadata_path, save_checkpoint
    from clearglass.errors import ClearglassError
    from clearglass.interpolate import interpolate
    from clearglass.io import check_writable, refuse_overwriting
    from clearglass.models import load_model

    if args.out.suffix not in (".pt", ".pth"):
        raise ClearglassError(f"--out {args.out}: expected a .pt or .pth file name")
    check_writable(args.out, "checkpoint")
    refuse_overwriting(args.out, {f"{flag} checkpoint{part}": where(path)
                                  for flag, path in (("--fine-tuned", args.fine_tuned), ("--base", args.base))
                                  if Path(path).suffix in (".pt", ".pth")
                                  for part, where in (("", Path), (" metadata", metadata_path),
                                                      (" resume state", extra_state_path))})
    bundle = interpolate(load_model(args.base), load_model(args.fine_tuned), args.w)
    path = save_checkpoint(bundle, args.out, train_config={"wise_ft": {"base": args.base,
                                                                       "fine_tuned": args.fine_tuned, "w": args.w}},
                           dataset_sha256="", metrics={})
    print(f"wrote {path}")
    return 0
