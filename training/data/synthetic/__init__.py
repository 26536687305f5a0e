"""Synthetic talking-head corpus: espeak-ng speech with phoneme timings -> visemes -> rendered faces.

    from training.data.synthetic import CorpusConfig, generate_corpus, render_talking_clip

    generate_corpus(CorpusConfig(root="data/corpus", clips=3000, seed=0))   # LRS2 layout
    frames, audio, boxes = render_talking_clip(0, "Hello there.")           # one full-frame clip

Command line: `lipsync-train corpus --help` or `python -m training.data.synthetic --help`.
"""

from .clip import render_talking_clip
from .corpus import CorpusConfig, generate_corpus, plan_corpus
from .espeak import EspeakError, EspeakNotFound, Voice, synthesize

__all__ = [
    "CorpusConfig",
    "EspeakError",
    "EspeakNotFound",
    "Voice",
    "generate_corpus",
    "plan_corpus",
    "render_talking_clip",
    "synthesize",
]
