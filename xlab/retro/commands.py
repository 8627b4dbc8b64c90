"""manage.py build-retrieval: the corpus cache and the retrieval database of a RETRO recipe."""

from __future__ import annotations

import argparse

from xlab.common.errors import XLabError
from xlab.retro.datamodule import RetroDataModule


def build_retrieval(args: argparse.Namespace, datamodule) -> int:
    if not isinstance(datamodule, RetroDataModule):
        raise XLabError(f"{', '.join(args.config)} does not use a RetroDataModule (data.class_path): nothing to "
                        "retrieve from.")
    datamodule.setup("fit")  # builds the corpus cache and the database if missing, then opens and checks it
    db = datamodule.database
    sizes = db.manifest["sizes"]
    print(f"retrieval database: {db.out_dir}")
    print(f"  {sizes['n_chunks']:,} chunks of {db.chunk_size} tokens from {sizes['n_docs']:,} documents, "
          f"{sizes['n_seqs']:,} training sequences of {db.seq_len} tokens")
    print(f"  embedder {db.manifest['embedder']['spec']['kind']} (dim {sizes['dim']}), "
          f"index {db.manifest['index']['factory']} ({sizes['index_bytes'] / 1e6:.1f} MB), k={db.k}")
    if args.out:
        print(f"train with it: --data.init_args.database_dir {db.out_dir}")
    return 0
