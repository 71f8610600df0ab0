"""Test-wide settings: one intra-op thread, so tests on a shared 2-core machine stay fast and stable
(small tensors gain nothing from threads, and a busy core slowed two-thread runs 10-40x)."""

import torch

torch.set_num_threads(1)
