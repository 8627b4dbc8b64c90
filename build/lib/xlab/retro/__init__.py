"""RETRO: a decoder with chunked cross-attention to neighbours retrieved from a database.

    model.py        RetroModel
    datamodule.py   RetroDataModule: the corpus cache plus a retrieval database of its train split
    database.py     the database: chunk a split, embed the chunks, index them, precompute neighbours
    chunking.py, embedders.py, index.py, neighbours.py   its steps, usable on their own
"""

from xlab.common.lazy import lazy_exports

# Imported when first asked for: the family's light modules (cli.py) need none of them.
_EXPORTS = {
    "RetroModel": ".model",
    "RetroDataModule": ".datamodule",
    "RetrievalDatabase": ".database",
    "build_retrieval_database_": ".database",
    "Embedder": ".embedders",
    "HashedNgramEmbedder": ".embedders",
    "HFEncoderEmbedder": ".embedders",
    "embed_chunks_": ".embedders",
    "make_embedder": ".embedders",
    "chunk_tokens_": ".chunking",
    "chunks_sha256": ".chunking",
    "neighbour_tokens": ".chunking",
    "sequence_starts": ".chunking",
    "build_index_": ".index",
    "choose_index_factory": ".index",
    "load_index": ".index",
    "parse_memory": ".index",
    "report_path": ".index",
    "filter_neighbours": ".neighbours",
    "precompute_neighbours_": ".neighbours",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
