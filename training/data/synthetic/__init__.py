"""Synthetic talking-head corpus: espeak-ng speech with phoneme timings -> visemes -> rendered faces.

    from lipsync.training.data.synthetic import CorpusConfig, generate_corpus, render_talking_clip

    generate_corpus(CorpusConfig(root="data/corpus", clips=3000, seed=0))   # LRS2 layout
    frames, audio, boxes = render_talking_clip(0, "Hello there.")           # one full-frame clip

Command line: `lipsync-train corpus --help` or `python -m lipsync.training.data.synthetic --help`.
"""

import importlib

# Imported on first use, so that `lipsync-train --help` does not load OpenCV and SciPy.
_EXPORTS = {
    "render_talking_clip": "clip",
    "CorpusConfig": "config",
    "generate_corpus": "corpus",
    "plan_corpus": "corpus",
    "EspeakError": "espeak",
    "EspeakNotFound": "espeak",
    "Voice": "espeak",
    "synthesize": "espeak",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
