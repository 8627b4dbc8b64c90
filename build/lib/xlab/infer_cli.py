"""What `infer.py` runs once its options are read: load the checkpoint or export, let each family
prepare it, merge the generation settings, then continue the prompt (or hand over to the family
front end the options chose: chat, image).

`infer.py` itself only builds the parser, so that `--help` needs neither torch nor Lightning.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import fields, replace

import torch

from xlab import inference
from xlab.common.errors import XLabError
from xlab.common.lazy import resolve
from xlab.families import front_ends
from xlab.inference import cut_at_stop
from xlab.inference.printer import StreamPrinter
from xlab.interop.export import load


def run(args: argparse.Namespace) -> int:
    families = front_ends()
    mode = next((f for f in families if f.selected is not None and f.selected(args)), None)
    if mode is None and not args.interactive and args.prompt is None:
        raise XLabError("no PROMPT given: pass the text to continue, '-' to read stdin, or --interactive.")
    loaded = load(args.checkpoint, device=pick_device(args.device))
    for front_end in families:
        if front_end.prepare is not None:
            front_end.prepare(loaded, args)
    settings = merged_settings(loaded, args)
    if args.stream and settings.num_samples > 1:
        raise XLabError("--stream shows one sequence as it grows: use it with --num-samples 1.")
    if mode is not None:
        return resolve(mode.run)(loaded, settings, args)
    if args.interactive:
        return interactive(loaded, settings, args)
    prompt = sys.stdin.read().removesuffix("\n") if args.prompt == "-" else args.prompt
    respond(loaded, settings, prompt, args)
    return 0


def pick_device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise XLabError("--device cuda was asked but no CUDA device is available: use --device cpu.")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def merged_settings(loaded, args: argparse.Namespace):
    """The export's (or the built-in) defaults, overridden by every option given."""
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
    for i, text in enumerate(continuations):
        if len(continuations) > 1:
            print(f"--- sample {i + 1} of {len(continuations)} ---")
        print(prompt + cut_at_stop(text, stops), flush=True)
