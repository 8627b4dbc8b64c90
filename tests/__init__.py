"""XLab's tests. Imported before any test module, and before torch.

The exactness tests (`test_references.py`, `memory/test_model_exact.py`) compare floats bit
for bit with values recorded once. The CPU kernels torch, MKL and oneDNN pick depend on the
processor (AVX-512 sums in another order than AVX2), so the tests pin them to AVX2, which every
x86-64 machine of this kind has: the recorded bits then hold on any of them.
"""

import os

for _name, _value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
    os.environ.setdefault(_name, _value)
