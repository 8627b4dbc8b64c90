"""DialogueDataModule: episodes -> split by episode -> tokenizer -> turn-masked windows.

    prepare_data   reads the episodes (dialogue modules or a built JSONL file), applies the filters,
                   assigns each episode to a split by a hash of its id (a conversation is never in
                   two splits), trains the tokenizer on the train episodes (the turn-end marker is
                   one of its special tokens) and encodes every split into a cache folder
    setup          rebuilds the episodes' token segments from the cache and cuts them into windows
    batches        input_ids, labels (IGNORE except on the bodies of trained turns, turn-end
                   included), num_bytes; val / test always mask this way, so their perplexity is
                   the perplexity of the replies whatever `mask_turns` trained with

Validation and test also report Hits@1 among `candidates` replies and the unigram F1 of greedy
replies (see `xlab/dialogue/metrics.py`).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xlab.common.errors import XLabError
from xlab.common.tokenizer import IGNORE_INDEX
from xlab.datamodules.base import DataModule
from xlab.datamodules.datasets import pad_collate
from xlab.datamodules.splits import SPLITS, split_of
from xlab.dialogue.build import collect
from xlab.dialogue.filters import apply_filters, build_filter
from xlab.dialogue.metrics import DialogueEvaluator
from xlab.dialogue.modules import build_module
from xlab.dialogue.render import DEFAULT_TURN_END, Rendered, Renderer, episode_text

DIALOGUE_CACHE_FORMAT = 1
PREFIX, HEADER, BODY = 0, 1, 2


class Windows(Dataset):
    """(ids, target) windows as next-token items: labels are IGNORE where the target is false."""

    def __init__(self, windows: list[tuple[list[int], list[bool]]], token_bytes: np.ndarray):
        self.windows, self.token_bytes = windows, token_bytes

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, target = self.windows[index]
        ids_t = torch.tensor(ids, dtype=torch.long)
        labels = ids_t[1:].clone()
        labels[~torch.tensor(target[1:], dtype=torch.bool)] = IGNORE_INDEX
        learned = labels[labels != IGNORE_INDEX].numpy()
        return {"input_ids": ids_t[:-1], "labels": labels, "num_bytes": torch.tensor(int(self.token_bytes[learned].sum()))}


class DialogueDataModule(DataModule):
    """Dialogue episodes for turn-masked training; the shared settings (vocab_size, tokenizer_type,
    special_tokens, split_fractions, split_salt, batch sizes, cache_dir, ...) are `DataModule`'s.

    Args:
        episodes: What to read: dialogue modules as `module:Class` or `module:Class=PATH`, or
            {module: ..., path: ..., options}; a path ending in .jsonl is a built episode file.
        filters: Filters applied to the examples (default none here; `build-dataset` applies all).
        turn_end: The special token that closes every turn (added to the tokenizer).
        mask_turns: Learn only the trained turns' bodies; false learns every token (an ablation).
        on_error: A malformed line of an episode file: fail (name it) or skip (count and report).
        eval_examples: Replies scored for Hits@1 and F1 at each validation / test.
        candidates: Replies ranked for Hits@1 (the true one and candidates - 1 from other episodes).
        reply_tokens: Most tokens of a generated reply (F1).
        max_documents: Read at most this many episodes (quick trials).
    """

    def __init__(self, episodes: list[str | dict[str, Any]] | None = None, filters: list[str | dict[str, Any]] | None = None,
                 turn_end: str = DEFAULT_TURN_END, mask_turns: bool = True,
                 on_error: Literal["skip", "fail"] = "fail", eval_examples: int = 100, candidates: int = 20,
                 reply_tokens: int = 32, **kwargs: Any):
        super().__init__(**kwargs)  # its save_hyperparameters() records these arguments too
        specs = [self._episode_file(s, on_error) for s in (episodes or ["chitchat:ChitChat"])]
        self.modules = [build_module(s) for s in specs]
        self.filters = [build_filter(f) for f in (filters or [])]
        if candidates < 2 or eval_examples < 0 or reply_tokens < 1:
            raise XLabError(f"data candidates={candidates} (>= 2), eval_examples={eval_examples} (>= 0) and "
                            f"reply_tokens={reply_tokens} (>= 1) are out of range.")
        self.rendered: dict[str, list] = {}
        self._renderer = None

    @staticmethod
    def _episode_file(spec: str | dict[str, Any], on_error: str) -> str | dict[str, Any]:
        if isinstance(spec, str) and spec.endswith(".jsonl") and ":" not in spec.split("=")[0]:
            return {"module": "episodes:Episodes", "path": spec, "on_error": on_error}
        return spec

    # --- the tokenizer and its special tokens -------------------------------------------------
    def tokenizer_settings(self) -> dict[str, Any]:
        settings = super().tokenizer_settings()
        settings["extra_special_tokens"] = list(dict.fromkeys([*settings["extra_special_tokens"], self.hparams.turn_end]))
        return settings

    def report(self) -> None:
        super().report()
        for split, size in self.meta["splits"].items():
            print(f"xlab: {split:<8} {size['episodes']:>8,} episodes {size['turns']:>9,} turns", flush=True)

    # --- what generation needs, and its evaluation ----------------------------------------------
    def generation_facts(self) -> dict[str, Any]:
        return {"turn_end": self.hparams.turn_end}

    def generation_evaluator(self, model) -> DialogueEvaluator:
        return DialogueEvaluator(self)

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None or self._renderer.tokenizer is not self.tokenizer:
            self._renderer = Renderer(self.tokenizer, self.hparams.turn_end,
                                      self.tokenizer_settings()["extra_special_tokens"])
        return self._renderer

    # --- the cache ----------------------------------------------------------------------------
    cache_kind = "dialogue"

    def cache_settings(self) -> dict[str, Any]:
        return {"format": DIALOGUE_CACHE_FORMAT, "modules": [m.fingerprint() for m in self.modules],
                "filters": [vars(f) | {"name": f.name} for f in self.filters], "fractions": self.fractions,
                "salt": self.hparams.split_salt, "max_documents": self.hparams.max_documents,
                "tokenizer": self.tokenizer_settings()}

    def build_cache_(self, tmp: Path) -> None:
        episodes = collect(self.modules, self.hparams.max_documents)
        episodes, counts = apply_filters(episodes, self.filters)
        if not episodes:
            raise XLabError("no dialogue episode was read: check data.episodes and the filters.")
        splits = {name: [] for name in SPLITS}
        for episode in episodes:
            splits[split_of(episode.id, self.fractions, self.hparams.split_salt)].append(episode)
        if not splits["train"]:
            raise XLabError("the train split holds no episode: add episodes or raise its split fraction.")
        turn_end = self.hparams.turn_end
        tokenizer = self.make_tokenizer(episode_text(e, turn_end) for e in splits["train"])
        (tmp / "tokenizer.model").write_bytes(tokenizer.to_bytes())  # the folder is renamed into place when complete
        renderer = Renderer(tokenizer, turn_end, self.tokenizer_settings()["extra_special_tokens"])
        sizes = {}
        for name, split in splits.items():
            rendered = [renderer.render(e) for e in split]
            _save_rendered_(tmp, name, rendered)
            sizes[name] = {"episodes": len(split), "turns": sum(len(e.turns) for e in split)}
        meta = {"splits": sizes, "filters": counts, "vocab_size": len(tokenizer),
                "unigram_loss": _unigram_reply_loss(tmp, len(tokenizer))}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    # --- splits -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        for split in SPLITS:
            if split not in self.rendered:
                self.rendered[split] = _load_rendered(self.cache_folder, split)

    def document_ids(self, split: str) -> list[str]:
        return [r.id for r in self.rendered[split]]

    def windows(self, split: str, mask_turns: bool = True) -> Windows:
        size = self.hparams.max_len + 1
        windows = [w for r in self.rendered[split] for w in Renderer.windows(r, size, mask_turns)]
        if not windows:
            raise XLabError(f"the {split} split has no dialogue window to learn from ({len(self.rendered[split])} "
                            "episodes): give it episodes (split_fractions) or raise the model's max_len.")
        return Windows(windows, self.token_bytes)

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.windows("train", self.hparams.mask_turns), True, self.hparams.batch_size,
                                  drop_last=True, collate_fn=pad_collate(self.pad_id))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.windows("val"), self.eval_batch_size, collate_fn=pad_collate(self.pad_id))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.windows("test"), self.eval_batch_size, collate_fn=pad_collate(self.pad_id))

    def predict_dataloader(self) -> DataLoader:
        items = [(doc, w) for doc, r in enumerate(self.rendered["predict"])
                 for w in Renderer.windows(r, self.hparams.max_len + 1)]
        if not items:
            raise XLabError("the predict split is empty: give it a share in data.split_fractions.")
        windows = Windows([w for _, w in items], self.token_bytes)
        dataset = [dict(windows[i], doc_index=torch.tensor(doc)) for i, (doc, _) in enumerate(items)]
        return self._loader(dataset, self.eval_batch_size, collate_fn=pad_collate(self.pad_id))

    def unigram_loss(self, split: str = "test") -> float | None:
        """Reply cross-entropy of a unigram model of the train replies: the baseline for reply perplexity."""
        return _unigram_reply_loss(self.cache_folder, len(self.tokenizer), split)

    # --- what the dialogue metrics score ------------------------------------------------------
    def eval_examples(self, split: str) -> list[dict[str, Any]]:
        """Up to `eval_examples` trained turns of the split that answer something (not an episode's
        first turn), each with the reference text, its body and `candidates - 1` bodies of other
        episodes' turns, drawn seeded by split_salt (the same examples at every validation), and
        three prompts, each the prefix, the most recent whole turns that fit, and the speaker's header:
            prompt        the history that leaves room for the longest candidate (capped at half the
                          context), the same for every candidate so they are ranked on equal terms
            prior         no history: the same prefix and header, what the reply is compared with
                          when ranking by how much the history raised its likelihood (hits@1_pmi)
            reply_prompt  the history that leaves room for `reply_tokens` generated tokens (F1)"""
        rendered = self.rendered[split]
        turns = [(e, t) for e, r in enumerate(rendered) for t, trained in enumerate(r.trained) if trained and t > 0]
        rng = random.Random(self.hparams.split_salt)
        chosen = sorted(rng.sample(turns, min(len(turns), self.hparams.eval_examples)))
        size, k = self.hparams.max_len, self.hparams.candidates
        examples = []
        for e, t in chosen:
            r = rendered[e]
            others = [(e2, t2) for e2, t2 in rng.sample(turns, min(len(turns), 4 * k)) if e2 != e][: k - 1]
            if len(others) < k - 1:
                continue  # a split of one episode has nothing to rank against
            negatives = [rendered[e2].bodies[t2] for e2, t2 in others]
            longest = min(max(len(b) for b in [r.bodies[t], *negatives]), size // 2)
            history = (r.prefix, r.headers[:t], r.bodies[:t], r.headers[t])
            examples.append({"prompt": Renderer.prompt(*history, size - longest),
                             "prior": Renderer.prompt(r.prefix, [], [], r.headers[t], size - longest),
                             "reply_prompt": Renderer.prompt(*history, max(size - self.hparams.reply_tokens, size // 2)),
                             "reference": r.texts[t], "body": r.bodies[t], "negatives": negatives})
        return examples


def _save_rendered_(folder: Path, split: str, rendered: list) -> None:
    """A split's token segments: one token array and one row per segment (episode, turn, kind,
    trained, start, end); the episode ids and turn texts beside them."""
    tokens, rows, start = [], [], 0
    for e, r in enumerate(rendered):
        pieces = [(-1, PREFIX, 0, r.prefix)]
        for t in range(len(r.headers)):
            pieces += [(t, HEADER, r.trained[t], r.headers[t]), (t, BODY, r.trained[t], r.bodies[t])]
        for t, kind, trained, ids in pieces:
            tokens.extend(ids)
            rows.append((e, t, kind, int(trained), start, start + len(ids)))
            start += len(ids)
    np.save(folder / f"{split}.tokens.npy", np.asarray(tokens, dtype=np.int32))
    np.save(folder / f"{split}.segments.npy", np.asarray(rows, dtype=np.int64).reshape(-1, 6))
    (folder / f"{split}.episodes.json").write_text(
        json.dumps([{"id": r.id, "texts": r.texts} for r in rendered], ensure_ascii=False))


def _load_rendered(folder: Path, split: str) -> list:
    tokens = np.load(folder / f"{split}.tokens.npy").tolist()
    rows = np.load(folder / f"{split}.segments.npy")
    info = json.loads((folder / f"{split}.episodes.json").read_text(encoding="utf-8"))
    rendered = [Rendered(i["id"], [], texts=i["texts"]) for i in info]
    for e, t, kind, trained, start, end in rows.tolist():
        r, ids = rendered[e], tokens[start:end]
        if kind == PREFIX:
            r.prefix = ids
        elif kind == HEADER:
            r.headers.append(ids)
            r.trained.append(bool(trained))
        else:
            r.bodies.append(ids)
    return rendered


def _unigram_reply_loss(folder: Path, vocab_size: int, split: str = "val") -> float | None:
    """Cross-entropy of the split's replies under the train replies' token frequencies (add-one):
    the bar a dialogue model must clear."""
    def reply_tokens(split: str) -> list[int]:
        tokens = np.load(folder / f"{split}.tokens.npy")
        rows = np.load(folder / f"{split}.segments.npy")
        chosen = rows[(rows[:, 2] == BODY) & (rows[:, 3] == 1)]
        return [int(x) for _, _, _, _, s, e in chosen.tolist() for x in tokens[s:e]]

    train, val = reply_tokens("train"), reply_tokens(split)
    if not val:
        return None
    counts, total = Counter(train), len(train) + vocab_size
    return float(-sum(math.log((counts[t] + 1) / total) for t in val) / len(val))
