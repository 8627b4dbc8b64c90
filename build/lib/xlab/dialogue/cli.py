"""The dialogue family's parts of the scripts: infer.py's chat mode and manage.py build-dataset."""

from __future__ import annotations

import argparse

from xlab.common.plugins import Command, FrontEnd, option


def _chatting(args: argparse.Namespace) -> bool:
    return args.chat


FRONT_END = FrontEnd(
    title="chat (models trained on dialogue episodes)",
    options=(
        option("--chat", action="store_true",
               help="a conversation: each line read is the user's turn, the model answers as the bot until the "
                    "turn-end token; the history is kept and windowed as in training"),
        option("--persona", default="", metavar="TEXT", help="the bot's persona, shown before the turns"),
        option("--context", default="", metavar="TEXT", help="the setting or scenario of the conversation"),
        option("--user-name", default="User", metavar="NAME", help="the user's speaker name (default User)"),
        option("--bot-name", default="Bot", metavar="NAME", help="the bot's speaker name (default Bot)"),
        option("--turn-end", metavar="TOKEN",
               help="the special token that ends a turn (default: the one the model was trained with)"),
    ),
    selected=_chatting,
    run="xlab.dialogue.chat:chat_command",
)

COMMANDS = (
    Command(
        "build-dataset",
        "read dialogue modules into episodes, filter them, and write one JSONL file (or print a few)",
        (
            option("-o", "--output-name", metavar="NAME",
                   help="file to write, without extension (.jsonl is added; an existing file is never overwritten); "
                        "default rev-{git short hash}-args{hash of -m and -f}, rev-nogit-... outside a git checkout"),
            option("-m", "--modules", metavar="MODULES",
                   help="comma-separated module:Class[=PATH[?option=value&...]] (default: every module that needs "
                        "no file: chitchat:ChitChat,chatterbot:Chatterbot); e.g. sharegpt:ShareGPT=data/chats.json"),
            option("-f", "--filters", metavar="FILTERS",
                   help="comma-separated filters, name[?option=value&...] (default: duplicates,length,unicode,"
                        "near_duplicates; '' for none)"),
            option("-p", "--print", type=int, metavar="N", dest="print_episodes",
                   help="print N episodes instead of writing a file"),
            option("-v", "--verbose", action="store_true",
                   help="report per-module counts and what the filters removed"),
        ),
        run="xlab.dialogue.build:build_dataset_command",
    ),
)
