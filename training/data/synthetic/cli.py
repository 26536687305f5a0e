"""`lipsync-train corpus`: write a synthetic talking-head corpus in the preprocessed LRS2 layout.

<out>/<identity>/<clip>/{0..n-1}.jpg + audio.wav   96x96 face crops, 16 kHz mono PCM16, 25 fps
<out>/filelists/{train,val,test}.txt                test faces and voices never seen in training
<out>/manifest.json, <out>/clips.jsonl              config, seed, splits; one record per clip
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from .text import LANGUAGES

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  lipsync-train corpus --out data/corpus --clips 3000 --seed 0
  python -m lipsync.training.data.synthetic --out /tmp/corpus_sample --clips 20 --workers 2
"""


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions, got {text!r}") from exc
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three fractions (train,val,test), got {text!r}")
    return parts  # type: ignore[return-value]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import CorpusConfig

    d = CorpusConfig(root="")
    p.add_argument(
        "--out", "--root", dest="root", required=True, help="corpus root to write (resumes an interrupted run)"
    )
    p.add_argument("--clips", type=int, default=d.clips, help="number of clips (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="everything follows from it (default %(default)s)")
    p.add_argument(
        "--identities", type=int, default=d.identities, help="size of the population of faces (default %(default)s)"
    )
    p.add_argument(
        "--split",
        type=_split,
        default=d.split,
        metavar="TRAIN,VAL,TEST",
        help="fractions of identities, voices and clips (default 0.9,0.05,0.05)",
    )
    p.add_argument(
        "--min-seconds", type=float, default=d.min_seconds, help="shortest intended clip (default %(default)s)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=d.max_seconds, help="clips are cut to this length (default %(default)s)"
    )
    p.add_argument(
        "--frame-size", type=int, default=d.frame_size, help="rendered full frame, square pixels (default %(default)s)"
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=d.crop_size,
        help="saved face crops, square pixels (default %(default)s, the model's input)",
    )
    p.add_argument("--languages", default=",".join(d.languages), help=f"comma-separated, from: {','.join(LANGUAGES)}")
    p.add_argument(
        "--boxes",
        choices=("detector", "render"),
        default=d.boxes,
        help="crop boxes from the project's face tracker (as real video) or the renderer (default %(default)s)",
    )
    p.add_argument(
        "--style",
        choices=("photo", "cartoon"),
        default=d.style,
        help="photo: faces as a camera shows them; cartoon: the first corpus's flat look (default %(default)s)",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="processes (default min(2, CPUs) = %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="generate nothing: write the filelists for the clips an interrupted run already finished",
    )


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "corpus",
        help="generate the synthetic talking-head corpus (LRS2 layout)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .config import CorpusConfig
    from .corpus import generate_corpus, write_filelists_for_finished
    from .espeak import EspeakError

    try:
        cfg = CorpusConfig(
            root=os.path.abspath(args.root),
            clips=args.clips,
            seed=args.seed,
            identities=args.identities,
            split=tuple(args.split),
            min_seconds=args.min_seconds,
            max_seconds=args.max_seconds,
            frame_size=args.frame_size,
            crop_size=args.crop_size,
            languages=tuple(x.strip() for x in args.languages.split(",") if x.strip()),
            boxes=args.boxes,
            style=args.style,
            workers=args.workers,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.finished_only:
        print(json.dumps(write_filelists_for_finished(cfg), indent=2))
        return 0
    try:
        summary = generate_corpus(cfg, progress=not args.no_progress)
    except EspeakError as exc:
        log.error("%s", exc)
        return 3
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m lipsync.training.data.synthetic",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
