"""manage.py build-retrieval: the corpus cache and the retrieval database of a RETRO recipe."""

from __future__ import annotations

import argparse

from xlab.common.errors import XLabError
from xlab.retro.datamodule import RetroDataModule


def build_retrieval(args: argparse.Namespace, datamodule) -> int:
    if not isinstance(datamodule, RetroDataModule):
        raise XLabError(f"{', '.join(args.config) or 'conf/defaults.yaml'} does not use a RetroDataModule (data.class_path): nothing to "
                        "retrieve from.")
    datamodule.setup("fit")  # builds the corpus cache and the database if missing, then opens and checks it
    datamodule.report()
    if args.out:
        print(f"train with it: --data.init_args.database_dir {datamodule.database.out_dir}")
    return 0
