#!/usr/bin/env python3
"""Continue a prompt with an XLab model.

Usage:
    ./infer.py [OPTIONS] CHECKPOINT_PATH "PROMPT"
    ./infer.py [OPTIONS] CHECKPOINT_PATH -            # prompt from stdin (one trailing newline dropped)
    ./infer.py --interactive [OPTIONS] CHECKPOINT_PATH  # a prompt loop; Ctrl-D ends it
    ./infer.py --chat [--persona TEXT] [--context TEXT] CHECKPOINT_PATH  # talk to a dialogue model; Ctrl-D ends it
    ./infer.py CHECKPOINT_PATH --image PATH [--style STYLE]  # caption an image with a caption model

The model families add their own options and modes (xlab/<family>/cli.py): chat, image, memory.

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

from xlab.common.errors import XLabError, exit_with, run_script
from xlab.families import front_ends


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
    for front_end in front_ends():
        front_end.add_to(parser)
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
        # Start-up cost: sampling needs torch and the models Lightning (seconds); --help needs neither.
        from xlab.infer_cli import run

        return run(args)
    except XLabError as error:
        exit_with(error)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    run_script(main)
