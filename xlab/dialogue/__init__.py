"""Dialogue data: readers -> modules -> episodes -> filters, and the build step behind
`manage.py build-dataset`.

    episode.py   the episode schema (context, personas, turns with a `train` flag) and JSONL reading
    modules/     one file per dataset: chitchat, chatterbot, ShareGPT, OpenAI chat, LIGHT,
                 PersonaChat, DailyDialog, Cornell, built episode files; named `module:Class`
    filters.py   duplicates, length, broken unicode, near-duplicate replies (per example)
    render.py    episodes as token ids with speaker names and the turn-end token; loss masks; windows
    build.py     every module's episodes, filtered, into one JSONL file (or printed)
    metrics.py   Hits@1 by log-likelihood ranking and unigram F1, logged at validation and test
    text.py      ParlAI's answer normalisation and unigram F1
"""
