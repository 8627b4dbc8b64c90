"""XLabCLI: LightningCLI with XLab's links, defaults and one-line errors.

    ./xlab.py fit -c conf/x.yaml [--section.key value ...]
    ./xlab.py validate|test|predict --ckpt_path CKPT [-c conf/x.yaml]

Without `-c`, conf/defaults.yaml is used. With `--ckpt_path` and no `-c`, the model and the
data settings come from the checkpoint itself, so evaluating a run needs nothing else.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from xlab.callbacks import DocumentScoreWriter, RandomState, RunSummary, XLabCheckpoint
from xlab.cli_errors import XLabArgumentParser
from xlab.datamodules import XLabDataModule
from xlab.errors import XLabError, exit_with
from xlab.models import LanguageModel

# Lightning's own noise, not the user's concern: an advert, a deprecation inside Lightning, and a
# note that validating a checkpoint from another run folder does not restore its top-k list.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message=r".*The dirpath has changed from.*")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "defaults.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class XLabCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(XLabCheckpoint, "checkpoint")
        parser.add_lightning_class_args(DocumentScoreWriter, "predictions")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True,
            "checkpoint.filename": "step{step:06d}-val_loss{val/loss:.3f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        # What the data decides flows into the model once the data module exists (its tokenizer
        # is built or loaded from the cache at that point) ...
        for name in ("vocab_size", "sos_id", "eos_id", "pad_id"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        # ... and the model's context decides the data's block size.
        parser.link_arguments("model.init_args.max_len", "data.init_args.max_len")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # A rich progress bar unless the run asks for none (Lightning refuses both at once) or
        # brings its own.
        listed = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks = [*callbacks, RichProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def parse_arguments(self, parser, args) -> None:
        self._given_args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        super()._parse_ckpt_path()  # the model's settings from the checkpoint
        subcommand = self.config.get("subcommand")
        if not subcommand or self.config[subcommand].get("config"):
            return  # an explicit config decides the data (e.g. evaluating on another corpus)
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        data = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("datamodule_hyper_parameters")
        if data and "_class_path" in data:
            # Settings given on the command line (an eval_batch_size, another cache_dir) still win.
            current = self.config[subcommand].data.init_args
            init_args = {k: v for k, v in data.items() if k not in ("_class_path", "_instantiator", "max_len")}
            init_args.update({k: current[k] for k in _data_keys_given(getattr(self, "_given_args", []))
                              if k in current})
            self.config = self.parser.parse_object(
                {subcommand: {"data": {"class_path": data["_class_path"], "init_args": init_args}}}, self.config)


def _data_keys_given(argv: list[str]) -> set[str]:
    """Names of the data settings in `argv` (`--data.init_args.NAME` or `--data.NAME`)."""
    names = set()
    for arg in argv:
        if arg.startswith("--data."):
            key = arg.split("=", 1)[0].removeprefix("--data.").removeprefix("init_args.")
            names.add(key.split(".", 1)[0])
    return names


def main(args: list[str] | None = None) -> XLabCLI | None:
    """Run the CLI on `args` (default: the command line); tests call this in-process."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        check_arguments(argv)
        uses_config = any(a in ("-c", "--config") or a.startswith("--config=") for a in argv)
        defaults = {} if uses_config else {"default_config_files": [str(DEFAULT_CONFIG)]}
        return XLabCLI(
            LanguageModel,
            XLabDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            auto_configure_optimizers=False,
            parser_class=XLabArgumentParser,
            trainer_defaults={"callbacks": [RunSummary(), RandomState()]},
            parser_kwargs={name: defaults for name in SUBCOMMANDS},
            save_config_kwargs={"overwrite": True},
        )
    except (XLabError, MisconfigurationException) as error:
        exit_with(error)


def check_arguments(argv: list[str]) -> None:
    """Catch a missing or unreadable checkpoint before Lightning turns it into a traceback."""
    ckpt = _value_of(argv, "--ckpt_path")
    if ckpt is not None and ckpt not in ("last", "best", "hpc", "registry"):
        from xlab.export import read_checkpoint

        read_checkpoint(ckpt)


def _value_of(argv: list[str], flag: str) -> Any:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
