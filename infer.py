#!/usr/bin/env python3
"""Continue a prompt with an XLab model.

Usage:
    ./infer.py [OPTIONS] CHECKPOINT_PATH "PROMPT"
    ./infer.py [OPTIONS] CHECKPOINT_PATH -            # prompt from stdin (one trailing newline dropped)
    ./infer.py --interactive [OPTIONS] CHECKPOINT_PATH  # a prompt loop; Ctrl-D ends it
    ./infer.py --chat [--persona TEXT] [--context TEXT] CHECKPOINT_PATH  # talk to a dialogue model; Ctrl-D ends it
    ./infer.py CHECKPOINT_PATH --image PATH [--style STYLE]  # caption an image (CaptionModel)

CHECKPOINT_PATH is a Lightning checkpoint (.ckpt) or an export folder (manage.py export-checkpoint,
manage.py import-hf); an export's generation.json supplies the defaults of the options below.

Examples:
    ./infer.py runs/last.ckpt "Once upon a time" --limit 100 --top-p 0.9 --temperature 0.8 --seed 1
    ./infer.py exports/tiny "def main(" --greedy --stop "\\n\\n" --stream
    ./infer.py exports/tiny "The answer is" --beams 4 --length-penalty 0.8 --num-samples 2

The prompt is preceded by the tokenizer's start token; generation ends at the end token, at a
stop string, or after --limit tokens. Text is printed prompt first; the speed goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable

from xlab.errors import XLabError, exit_with, run_script


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Options left unset take the export's generation.json values.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT_PATH", help="a .ckpt file or an export folder")
    parser.add_argument("prompt", metavar="PROMPT", nargs="?",
                        help="text to continue; '-' reads it from stdin; omit with --interactive")
    run = parser.add_argument_group("running")
    run.add_argument("--limit", type=int, dest="output_length", metavar="N",
                     help="most new tokens per sample (default 256)")
    run.add_argument("--num-samples", type=int, metavar="N", help="samples per prompt (beam search: best hypotheses)")
    run.add_argument("--seed", type=int, metavar="N", help="random seed: the same seed gives the same samples")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to run; auto picks cuda when available (default auto)")
    run.add_argument("--stream", action="store_true", help="print tokens as they are produced")
    run.add_argument("--interactive", action="store_true", help="read prompts line by line until end of input")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, metavar="T",
                          help="softmax temperature (default 1); 0 means greedy, negative is an error")
    sampling.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    sampling.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens only")
    sampling.add_argument("--top-p", type=float, metavar="P",
                          help="sample from the smallest set of tokens with probability >= P, in (0, 1]")
    beam = parser.add_argument_group("beam search")
    beam.add_argument("--beams", type=int, dest="num_beams", metavar="N",
                      help="beam search with N beams (deterministic)")
    beam.add_argument("--length-penalty", type=float, metavar="L",
                      help="score = log-probability / length^L; > 0 favours longer outputs (default 1)")
    beam.add_argument("--early-stopping", choices=("true", "false", "never"),
                      help="true: stop once N hypotheses end; false: when no beam can improve (default); "
                           "never: only at --limit")
    rules = parser.add_argument_group("constraints")
    rules.add_argument("--repetition-penalty", type=float, metavar="R",
                       help="> 1 discourages tokens already in the text, prompt included (default 1: off)")
    rules.add_argument("--no-repeat-ngram", type=int, dest="no_repeat_ngram_size", metavar="N",
                       help="never repeat an n-gram of this many tokens (default 0: off)")
    rules.add_argument("--min-length", type=int, metavar="N",
                       help="new tokens before the end token or a stop string may end")
    rules.add_argument("--exclude", action="append", metavar="TOKEN", default=[],
                       help="never produce this token (an id or a piece); repeatable")
    rules.add_argument("--stop", action="append", metavar="TEXT", default=[], dest="stop_strings",
                       help="end when the new text contains TEXT (backslash escapes like \\n work); repeatable")
    context = parser.add_argument_group("context")
    context.add_argument("--block-size", type=int, metavar="N",
                         help="tokens of context the model sees (default: its max_len); longer text slides")
    context.add_argument("--slide-keep", type=_int_or_fraction, metavar="N|F",
                         help="when the text outgrows the block, keep this many tokens, or this fraction "
                              "of the block if < 1 (default: block size - 1)")
    captions = parser.add_argument_group("captions (CaptionModel)")
    captions.add_argument("--image", metavar="PATH", help="caption this image file instead of continuing a prompt")
    captions.add_argument("--style", metavar="STYLE", help="the caption's style (an unknown one lists the known ones)")
    memory = parser.add_argument_group("memory (MemoryGPT2)")
    memory.add_argument("--memory-writes", action="store_true",
                        help="also store the prompt and the generated text in the memory, as training does, so "
                             "later text (and later prompts with --interactive) can recall it; by default "
                             "sampling only reads the saved memory. The checkpoint is never changed")
    chat = parser.add_argument_group("chat (models trained on dialogue episodes)")
    chat.add_argument("--chat", action="store_true",
                      help="a conversation: each line read is the user's turn, the model answers as the bot "
                           "until the turn-end token; the history is kept and windowed as in training")
    chat.add_argument("--persona", default="", metavar="TEXT", help="the bot's persona, shown before the turns")
    chat.add_argument("--context", default="", metavar="TEXT", help="the setting or scenario of the conversation")
    chat.add_argument("--user-name", default="User", metavar="NAME", help="the user's speaker name (default User)")
    chat.add_argument("--bot-name", default="Bot", metavar="NAME", help="the bot's speaker name (default Bot)")
    chat.add_argument("--turn-end", default="<|turn_end|>", metavar="TOKEN",
                      help="the special token that ends a turn, as the data module's turn_end (default <|turn_end|>)")
    return parser


def _int_or_fraction(text: str) -> int | float:
    value = float(text)
    if value < 1:
        return value
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text} is neither a token count nor a fraction below 1")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except XLabError as error:
        exit_with(error)
    except KeyboardInterrupt:
        return 130


def run(args: argparse.Namespace) -> int:
    if args.image is not None:
        from xlab.inference.caption import caption_command

        return caption_command(args, pick_device(args.device), merged_settings)
    if not args.interactive and not args.chat and args.prompt is None:
        raise XLabError("no PROMPT given: pass the text to continue, '-' to read stdin, or --interactive.")
    from xlab.export import load

    device = pick_device(args.device)
    loaded = load(args.checkpoint, device=device)
    if args.memory_writes:
        enable_memory_writes(loaded.model)
    settings = merged_settings(loaded, args)
    if args.stream and settings.num_samples > 1:
        raise XLabError("--stream shows one sequence as it grows: use it with --num-samples 1.")
    if args.chat:
        from xlab.inference.chat import chat

        return chat(loaded, settings, args.user_name, args.bot_name, args.persona, args.context, args.turn_end,
                    args.stream, args.seed)
    if args.interactive:
        return interactive(loaded, settings, args)
    prompt = sys.stdin.read().removesuffix("\n") if args.prompt == "-" else args.prompt
    respond(loaded, settings, prompt, args)
    return 0


def pick_device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise XLabError("--device cuda was asked but no CUDA device is available: use --device cpu.")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def enable_memory_writes(model) -> None:
    try:
        model.set_generation_writes(True)
    except XLabError as error:
        raise XLabError(f"--memory-writes needs a model with a memory, and this one has none ({error}): "
                        "drop the option or pass a MemoryGPT2 checkpoint.") from None


def merged_settings(loaded, args: argparse.Namespace):
    """The export's (or the built-in) defaults, overridden by every option given."""
    from dataclasses import fields, replace

    overrides = {f.name: getattr(args, f.name) for f in fields(loaded.generation)
                 if getattr(args, f.name, None) is not None}
    if args.greedy:
        overrides["temperature"] = 0.0
    if args.early_stopping is not None:
        overrides["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, "never")
    if args.stop_strings:
        overrides["stop_strings"] = [_unescape(s) for s in args.stop_strings]
    if args.exclude:
        overrides["exclude_tokens"] = [_token_id(loaded.tokenizer, t) for t in args.exclude]
    return replace(loaded.generation, **overrides)


def _unescape(text: str) -> str:
    """Interpret backslash escapes (so a shell can pass a newline as \\n), keeping other characters."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _token_id(tokenizer, token: str) -> int:
    if token.lstrip("-").isdigit():
        return int(token)
    try:
        return tokenizer[token]
    except KeyError:
        raise XLabError(f"--exclude {token!r} is neither a token id nor a piece of the tokenizer.") from None


def interactive(loaded, settings, args: argparse.Namespace) -> int:
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            print(file=sys.stderr)
            return 0
        if line.strip():
            try:
                respond(loaded, settings, line.rstrip("\n"), args)
            except XLabError as error:
                print(f"error: {error}", file=sys.stderr)


def respond(loaded, settings, prompt: str, args: argparse.Namespace) -> None:
    """Generate for one prompt and print the text(s) and the speed."""
    import torch

    from xlab import inference

    if not prompt:
        raise XLabError("the prompt is empty: give some text to continue.")
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = [tokenizer[tokenizer.sos_token], *tokenizer.encode(prompt)]
    inputs = torch.tensor(ids, device=model.device)
    printer = StreamPrinter(tokenizer.decode, settings.stop_strings, prompt) if args.stream else None
    before = model.state_summary()
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = inference.generate(model, [inputs], settings, decode=tokenizer.decode, stream=printer,
                                     seed=args.seed)[0]
    seconds = time.perf_counter() - began
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if printer is not None:
        printer.finish()
    else:
        print_samples(prompt, [tokenizer.decode(r) for r in results], settings.stop_strings)
    tokens = sum(len(r) for r in results)
    state = state_change(before, model.state_summary())
    print(f"[{tokens} tokens in {seconds:.2f} s: {tokens / max(seconds, 1e-9):.1f} tokens/s{state}]",
          file=sys.stderr)


def state_change(before: dict[str, int], after: dict[str, int]) -> str:
    """The model's state summary after sampling and its change, e.g. "; memory 9,551 entries (-211)"."""
    parts = []
    for key, value in after.items():
        what, _, unit = key.rpartition("_")  # "memory_entries": memory ... entries
        parts.append(f"{what or key} {value:,} {unit if what else ''}".rstrip()
                     + f" ({value - before.get(key, 0):+,})")
    return "".join(f"; {part}" for part in parts)


def print_samples(prompt: str, continuations: list[str], stops: list[str]) -> None:
    from xlab.inference import cut_at_stop

    for i, text in enumerate(continuations):
        if len(continuations) > 1:
            print(f"--- sample {i + 1} of {len(continuations)} ---")
        print(prompt + cut_at_stop(text, stops), flush=True)


class StreamPrinter:
    """Prints the first sequence's text as tokens arrive, decoding only the new tokens.

    Each token's text is the decode of (the last token already shown + the tokens since) minus the
    decode of that anchor: the anchor keeps what a tokenizer does at the start of a text (such as
    dropping the leading space of sentencepiece's first piece) out of the new text. Text is final
    only once it does not end in U+FFFD (a character whose bytes have not all arrived), and the last
    len(stop) - 1 characters may still become a stop string, which is not printed.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str], prompt: str):
        self.decode, self.stops = decode, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.anchor: list[int] = []  # the last token whose text is in `self.text`
        self.pending: list[int] = []  # tokens since, whose text is not complete yet
        self.text = ""  # the new text so far (never the prompt)
        self.printed = 0
        self.stopped = False
        print(prompt, end="", flush=True)

    def __call__(self, sequence: int, token: int) -> None:
        if sequence != 0 or self.stopped:
            return
        self.pending.append(token)
        piece = self.decode(self.anchor + self.pending)[len(self.decode(self.anchor)):]
        if piece.endswith("\ufffd"):
            return
        self.anchor, self.pending = self.pending[-1:], []
        self.text += piece
        self._show(final=False)

    def finish(self) -> None:
        if not self.stopped:
            if self.pending:  # an incomplete character at the very end: print what decode makes of it
                self.text += self.decode(self.anchor + self.pending)[len(self.decode(self.anchor)):]
            self._show(final=True)
        print(flush=True)

    def _show(self, final: bool) -> None:
        from xlab.inference import cut_at_stop

        # A stop string cannot start before `printed`: that text was held back long enough.
        start = max(0, self.printed - self.hold)
        window = self.text[start:]
        cut = cut_at_stop(window, self.stops)
        self.stopped = len(cut) < len(window)
        end = start + len(cut) if self.stopped or final else len(self.text) - self.hold
        if end > self.printed:
            print(self.text[self.printed:end], end="", flush=True)
            self.printed = end


if __name__ == "__main__":
    run_script(main)
