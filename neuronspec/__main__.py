"""`python -m neuronspec` is the `neuronspec` command (also what `torchrun -m neuronspec run ...` starts)."""

import sys

from neuronspec.cli import main

sys.exit(main())
