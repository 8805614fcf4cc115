"""Test-wide settings: one torch thread per process.

The tests use tiny models, for which one thread is as fast as two, and several test processes
(subprocess resume tests) or other jobs may share the 2 CI cores: oversubscribed OpenMP threads slow
torch down by an order of magnitude (measured: 56 s vs 1.3 s for one property test).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
