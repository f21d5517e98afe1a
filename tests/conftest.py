"""Shared test setup.

Tiny models run thousands of small matmuls; with several torch threads on a 2-core
machine they spend most of their time spinning (measured: 500 ms vs 2 ms per forward
when other processes compete). One thread makes the unit tier fast and steady; the
end-to-end tier raises it again for the real model.
"""

import torch

torch.set_num_threads(1)
