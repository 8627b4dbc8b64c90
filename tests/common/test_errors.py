"""xlab.common.errors: the message of a library's error, as a one-line error quotes it."""

import faiss
import pytest

from xlab.common.errors import last_line


def test_last_line_is_where_faiss_puts_its_message():
    with pytest.raises(RuntimeError) as raised:
        faiss.index_factory(8, "IVF4,Bogus")
    assert "could not parse code description Bogus" in last_line(raised.value)
    located = RuntimeError("Error in faiss::gpu::GpuIndex at GpuIndex.cu:80:\n\n  k must be <= 2048\n")
    assert last_line(located) == "k must be <= 2048"
    assert last_line(ValueError("")) == "ValueError"
