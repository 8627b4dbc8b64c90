"""XLabCLI: LightningCLI with XLab's links, defaults and one-line errors.

    ./xlab.py fit -c conf/x.yaml [--section.key value ...]
    ./xlab.py validate|test|predict --ckpt_path CKPT [-c conf/x.yaml]

Without `-c`, conf/defaults.yaml is used. With `--ckpt_path` and no `-c`, the model and the
data settings come from the checkpoint itself, so evaluating a run needs nothing else. The
checkpoint is read once per run: the check of the file, the settings and the Trainer's restore
share one `read_checkpoint`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import namespace_to_dict
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from xlab.callbacks import DocumentScoreWriter, GenerationMetrics, RandomState, RunSummary, XLabCheckpoint
from xlab.cli_errors import XLabArgumentParser, xlab_error_in
from xlab.common.checkpoint import read_checkpoint
from xlab.common.errors import XLabError, exit_with
from xlab.datamodules.base import DataModule
from xlab.models import LanguageModel
from xlab.precision import fitting_precision
from xlab.progress_bar import StepProgressBar
from xlab.progress_lines import ProgressLines

# Lightning's own noise, not the user's concern: an advert, a deprecation inside Lightning, and a
# note that validating a checkpoint from another run folder does not restore its top-k list.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message=r".*The dirpath has changed from.*")
# main() hands LightningCLI the command line itself when it names the checkpoint's classes in it.
warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended to run from within Python.*")

# The checkout's conf/defaults.yaml; an installed package carries the recipes as xlab/conf.
DEFAULT_CONFIG = next((path for path in (Path(__file__).resolve().parent.parent / "conf" / "defaults.yaml",
                                         Path(__file__).resolve().parent / "conf" / "defaults.yaml") if path.is_file()),
                      Path(__file__).resolve().parent.parent / "conf" / "defaults.yaml")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class CheckpointReads:
    """Checkpoints read in this run, by path, until the Trainer takes them for its restore."""

    def __init__(self):
        self._read: dict[Path, dict[str, Any]] = {}

    def read(self, path: str | Path) -> dict[str, Any]:
        key = Path(path).resolve()
        if key not in self._read:
            self._read[key] = read_checkpoint(key)
        return self._read[key]

    def take(self, path: str | Path) -> dict[str, Any] | None:
        """The dict read for `path`, handed over once (the Trainer's restore may change it)."""
        return self._read.pop(Path(path).resolve(), None)


class ReadOnceCheckpointIO:
    """The Trainer's checkpoint IO, answering a restore from the dict the CLI has read already.

    It wraps the IO rather than subclassing it, so it is not offered as a plugin in `--help`."""

    def __init__(self, inner, reads: CheckpointReads):
        self.inner, self.reads = inner, reads

    def load_checkpoint(self, path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Both load on the CPU; weights_only=True has already refused pickled code.
        taken = self.reads.take(path) if isinstance(path, (str, Path)) else None
        return taken if taken is not None else self.inner.load_checkpoint(path, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class XLabCLI(LightningCLI):
    """LightningCLI with XLab's links and defaults. `data_only` builds the data module alone (no model,
    no trainer): what `manage.py prepare-data` and `build-retrieval` need from a recipe."""

    def __init__(self, *args: Any, checkpoint_reads: CheckpointReads | None = None, data_only: bool = False,
                 **kwargs: Any):
        self.checkpoint_reads = checkpoint_reads or CheckpointReads()
        self.data_only = data_only
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(XLabCheckpoint, "checkpoint")
        parser.add_lightning_class_args(DocumentScoreWriter, "predictions")
        parser.add_argument("--precision_fallback", type=bool, default=True,
                            help="Train in 32-true where the recipe asks for bf16 and the device multiplies bf16 "
                                 "matrices slower than fp32 (measured once per run); false keeps the recipe's.")
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
        parser.link_arguments("data.added_tokens", "model.init_args.added_tokens", apply_on="instantiate")
        # ... and the model's context decides the data's block size.
        parser.link_arguments("model.init_args.max_len", "data.init_args.max_len")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # A rich progress bar on a terminal, unless the run asks for none (Lightning refuses both at
        # once) or brings its own; plain lines in a log, where a bar would print nothing readable.
        listed = [*(config.get("callbacks") or []), *callbacks]
        if self._section().get("precision_fallback", True):
            precision, notice = fitting_precision(config.get("precision"), config.get("accelerator"))
            if notice is not None:
                config = {**config, "precision": precision}
                print(notice, flush=True)
        if not sys.stdout.isatty() and not any(isinstance(c, ProgressBar) for c in listed):
            config = {**config, "enable_progress_bar": False}
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks = [*callbacks, StepProgressBar()]
        elif not any(isinstance(c, (ProgressBar, ProgressLines)) for c in listed):
            callbacks = [*callbacks, ProgressLines()]
        trainer = super()._instantiate_trainer(config, callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the run configured
            trainer.strategy.checkpoint_io = ReadOnceCheckpointIO(trainer.strategy.checkpoint_io, self.checkpoint_reads)
        if trainer.logger is None:
            # No logger, no run folder: Lightning would save the run's config.yaml in the cwd.
            for callback in trainer.callbacks:
                if isinstance(callback, SaveConfigCallback):
                    callback.save_to_log_dir = False
        return trainer

    def _section(self) -> Any:
        """The configuration of the subcommand being run (the whole one without subcommands)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def instantiate_classes(self) -> None:
        # A data module's or model's constructor refusing a setting is the user's one-line error,
        # not a traceback through jsonargparse's union of types.
        try:
            if self.data_only:
                data = self.config["data"]
                module, _, name = data["class_path"].rpartition(".")
                data_class = getattr(importlib.import_module(module), name)
                self.datamodule = data_class(**namespace_to_dict(data["init_args"]))
                return
            super().instantiate_classes()
        except Exception as error:
            found = xlab_error_in(error)
            if found is None:
                raise
            raise found from None

    def parse_arguments(self, parser, args) -> None:
        self._given_args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """The model's settings (and, without `-c`, the data's) from the checkpoint: Lightning's
        own version of this reads the file again."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = self.checkpoint_reads.read(ckpt_path)
        given = getattr(self, "_given_args", [])
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if hparams:
            # Model settings given on the command line (force_database, compile, ...) win too.
            current = self.config[subcommand].model.get("init_args") or {}
            hparams.update({k: current[k] for k in _keys_given(given, "model") if k in current})
            if "_class_path" in hparams:
                hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        if self.config[subcommand].get("config"):
            return  # an explicit config decides the data (e.g. evaluating on another corpus)
        data = ckpt.get("datamodule_hyper_parameters")
        if data and "_class_path" in data:
            # Settings given on the command line (an eval_batch_size, another cache_dir) still win.
            current = self.config[subcommand].data.init_args
            init_args = {k: v for k, v in data.items() if k not in ("_class_path", "_instantiator", "max_len")}
            init_args.update({k: current[k] for k in _keys_given(given, "data") if k in current})
            self.config = self.parser.parse_object(
                {subcommand: {"data": {"class_path": data["_class_path"], "init_args": init_args}}}, self.config)


def _keys_given(argv: list[str], section: str) -> set[str]:
    """Names of the `section` (model, data) settings in `argv` (`--data.init_args.NAME` or `--data.NAME`)."""
    names = set()
    for arg in argv:
        if arg.startswith(f"--{section}."):
            key = arg.split("=", 1)[0].removeprefix(f"--{section}.").removeprefix("init_args.")
            names.add(key.split(".", 1)[0])
    return names


def _with_checkpoint_classes(argv: list[str], reads: CheckpointReads) -> list[str]:
    """`argv` naming the checkpoint's own model and data classes, when it is evaluated or resumed
    without -c: then settings of those classes (a RETRO database_dir, a dialogue eval_examples)
    given on the command line are checked against them, not against conf/defaults.yaml's classes."""
    ckpt_path = _value_of(argv, "--ckpt_path")
    if not argv or argv[0] not in SUBCOMMANDS or ckpt_path is None or _uses_config(argv):
        return argv
    try:
        ckpt = reads.read(ckpt_path)
    except XLabError:
        return argv  # check_arguments reports it
    classes = []
    for section, record in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        class_path = (ckpt.get(record) or {}).get("_class_path")
        if class_path and _value_of(argv, f"--{section}") is None:
            classes.append(f"--{section}={class_path}")
    return [argv[0], *classes, *argv[1:]]


def main(args: list[str] | None = None) -> XLabCLI | None:
    """Run the CLI on `args` (default: the command line); tests call this in-process."""
    argv = sys.argv[1:] if args is None else list(args)
    reads = CheckpointReads()
    try:
        check_arguments(argv, reads)
        defaults = _defaults(argv)
        given = _with_checkpoint_classes(argv, reads)
        return XLabCLI(LanguageModel, DataModule, args=given if given != argv or args is not None else None, parser_kwargs={name: defaults for name in SUBCOMMANDS},
                       trainer_defaults={"callbacks": [RunSummary(), RandomState(), GenerationMetrics()]},
                       checkpoint_reads=reads, **CLI_SETTINGS)
    except (XLabError, MisconfigurationException) as error:
        exit_with(error)


def data_module_from_config(args: list[str]):
    """The data module a recipe describes, read as `xlab.py fit` reads it (conf/defaults.yaml without
    -c, the links from the model's settings, one-line errors), built without the model or a trainer."""
    cli = XLabCLI(LanguageModel, DataModule, args=list(args), run=False, parser_kwargs=_defaults(args),
                  data_only=True, **CLI_SETTINGS)
    return cli.datamodule


def prepare_data_command(args, datamodule) -> int:
    """manage.py prepare-data: build what the recipe's data needs (tokenizer, caches and, for RETRO,
    the database) and say what it holds, so that `xlab.py fit` with the same settings only opens it:
    once before a multi-node launch, on a filesystem every node sees."""
    datamodule.setup("fit")
    datamodule.report()
    print("xlab: ready: xlab.py fit with the same data settings (and cache_dir) reuses it", flush=True)
    return 0


CLI_SETTINGS = dict(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False,
                    parser_class=XLabArgumentParser, save_config_kwargs={"overwrite": True})


def _defaults(argv: list[str]) -> dict[str, Any]:
    """conf/defaults.yaml, unless the arguments name a config of their own."""
    return {} if _uses_config(argv) else {"default_config_files": [str(DEFAULT_CONFIG)]}


def _uses_config(argv: list[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in argv)


def check_arguments(argv: list[str], reads: CheckpointReads) -> None:
    """Catch a missing or unreadable checkpoint before Lightning turns it into a traceback."""
    ckpt = _value_of(argv, "--ckpt_path")
    if ckpt is not None and ckpt not in ("last", "best", "hpc", "registry"):
        reads.read(ckpt)


def _value_of(argv: list[str], flag: str) -> Any:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
