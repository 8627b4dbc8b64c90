"""Dialogue: readers -> episodes -> filters -> rendered turns, the data module that trains on them,
their evaluation and the chat front end.

    episode.py      the episode schema (context, personas, turns with a `train` flag) and JSONL reading
    modules/        one reader per dataset: chitchat, chatterbot, ShareGPT, OpenAI chat, LIGHT,
                    PersonaChat, DailyDialog, Cornell, built episode files; named `module:Class`
    filters.py      duplicates, length, broken unicode, near-duplicate replies (per example)
    render.py       episodes as token ids with speaker names and the turn-end token; loss masks; windows
    datamodule.py   DialogueDataModule: episodes split by id, rendered, windowed at turn boundaries
    build.py        every module's episodes, filtered, into one JSONL file (or printed)
    metrics.py      Hits@1 by log-likelihood ranking and unigram F1 at validation and test
    text.py         ParlAI's answer normalisation and unigram F1
    chat.py         infer.py's chat mode
"""

from xlab.common.lazy import lazy_exports

# Imported when first asked for: the family's light modules (cli.py) need none of them.
_EXPORTS = {
    "DialogueDataModule": ".datamodule",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
