"""RETRO retrieval database: chunk a split, embed the chunks, index them, precompute neighbours.

Build once with `build_retrieval_database_`, then open with `RetrievalDatabase`; the steps are
usable on their own (`chunk_tokens_`, `make_embedder`, `build_index_`, `precompute_neighbours_`).
"""

from xlab.retrieval.chunking import chunk_tokens_, chunks_sha256, neighbour_tokens, sequence_starts
from xlab.retrieval.database import RetrievalDatabase, build_retrieval_database_
from xlab.retrieval.embedders import (Embedder, HashedNgramEmbedder, HFEncoderEmbedder, embed_chunks_,
                                      make_embedder)
from xlab.retrieval.index import build_index_, choose_index_factory, load_index, parse_memory, report_path
from xlab.retrieval.neighbours import filter_neighbours, precompute_neighbours_

__all__ = [
    "Embedder", "HFEncoderEmbedder", "HashedNgramEmbedder", "RetrievalDatabase", "build_index_",
    "build_retrieval_database_", "choose_index_factory", "chunk_tokens_", "chunks_sha256", "embed_chunks_",
    "filter_neighbours", "load_index", "make_embedder", "neighbour_tokens", "parse_memory",
    "precompute_neighbours_", "report_path", "sequence_starts",
]
