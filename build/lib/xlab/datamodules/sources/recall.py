"""A synthetic recall task: documents that state key -> value facts, then ask for them again.

Each document is a facts section followed by a questions section over the same facts, in the
same order:

    =KELOvutu=GOSUdezo...?KELOvutu?GOSUdezo...

`=` opens a fact and `?` a question; keys are upper-case and values lower-case made-up words of
two syllables, drawn per document (keys without repeats). Keys, values and both markers are
declared as whole tokens (`whole_tokens`), so the tokenizer keeps each one a single token and a
document is exactly `6 * facts + 2` tokens with sos and eos. A question therefore sits exactly
`3 * facts` tokens after its fact: with `3 * facts >= max_len` no question can see its fact
inside the context window, and the answer (the value after `? KEY`) can only come from a memory
carried across blocks. Values are uniform, so without one the best answer accuracy is
1 / values.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from xlab.common.errors import XLabError
from xlab.datamodules.sources.base import Document, Source, register

FORMAT = 1  # bump when the text layout changes, so cached encodings of the old one are not reused
FACT, QUESTION = "=", "?"
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]
MAX_WORDS = len(_SYLLABLES) ** 2
# A tokenizer trained on these documents alone has exactly this many pieces besides the words:
# 256 byte fallbacks, pad / unk / sos / eos and the newline symbol.
BASE_PIECES = 256 + 4 + 1


def _words(count: int, seed: int, salt: str) -> list[str]:
    words = [a + b for a in _SYLLABLES for b in _SYLLABLES]
    random.Random(f"{salt}:{seed}").shuffle(words)
    return words[:count]


@register
class RecallSource(Source):
    """`documents` recall documents of `facts` facts each over `keys` keys and `values` values.

    Args:
        documents: How many documents (the split then sends each to train / val / test / predict).
        facts: Facts per document; 3 * facts is the fact-to-question distance in tokens.
        keys: Size of the key vocabulary (at least `facts`).
        values: Size of the value vocabulary (answers are uniform over it).
        seed: Draws the words and the documents.
    """

    kind = "recall"
    answer_marker = QUESTION  # the token before each answer's key; see StreamDataModule

    def __init__(self, documents: int = 5000, facts: int = 8, keys: int = 1024, values: int = 16, seed: int = 0):
        for name, value, low, high in (("documents", documents, 1, None), ("keys", keys, 1, MAX_WORDS),
                                       ("values", values, 2, MAX_WORDS), ("facts", facts, 1, keys)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                bound = f" and <= {high}" if high is not None else ""
                raise XLabError(f"recall source: {name} must be an integer >= {low}{bound}, got {value!r}.")
        self.documents, self.facts, self.seed = documents, facts, seed
        self.keys = [w.upper() for w in _words(keys, seed, "keys")]
        self.values = _words(values, seed, "values")

    def __iter__(self) -> Iterator[Document]:
        rng = random.Random(f"documents:{self.seed}")
        for i in range(self.documents):
            keys = rng.sample(self.keys, self.facts)
            values = [rng.choice(self.values) for _ in keys]
            facts = "".join(f"{FACT}{k}{v}" for k, v in zip(keys, values))
            questions = "".join(f"{QUESTION}{k}{v}" for k, v in zip(keys, values))
            yield Document(f"recall/{self.seed}/{i}", facts + questions)

    def whole_tokens(self) -> list[str]:
        """Strings the tokenizer must keep as single tokens for the layout above to hold."""
        return [FACT, QUESTION, *self.keys, *self.values]

    def tokenizer_vocab_size(self) -> int:
        """The vocabulary a tokenizer trained on these documents alone reaches (and may ask for)."""
        return BASE_PIECES + len(self.whole_tokens())

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "format": FORMAT, "documents": self.documents, "facts": self.facts,
                "keys": len(self.keys), "values": len(self.values), "seed": self.seed}
