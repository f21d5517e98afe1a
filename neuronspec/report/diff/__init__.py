"""`neuronspec diff A B`: what changed between two studies or runs, what it invalidates, what moved.

A *side* is a study file, a study at a git revision (`REV:path`, read with `git show`)
or a past run (its record). Three comparisons, DVC-style (`A | B | Δ`):

* **spec** — a semantic diff of the validated studies (`Study.model_dump`), arms matched
  by name; for every changed field, the stages it invalidates. Those are found by
  compiling A with just that one change applied and comparing stage keys (if the change
  cannot stand alone — say a new arm naming a new set — B with just that change reverted;
  failing both, the stages whose `origin` is that field, and what depends on them).
* **metrics** — the headline metric of every evaluation stage whose key differs, with
  confidence intervals; a Δ is marked when the two intervals do not overlap. Plus the
  derived ΔEng / Δn-Eng / Δ per arm.
* **neuron sets** — sizes per set and language, the Jaccard overlap of A's and B's set,
  and which layers changed (from the `sets` and `mask/*` stages' NeuronSet files).

`diff_sides` returns one typed `Diff` (diff/model.py); `diff_tables` renders it with the one
`Table` type, so `--json`, `--md` and the terminal show the same numbers.

The package, by concern: `sides` reads a side (file, revision, run); `spec` diffs two studies
field by field; `whatif` finds the stages each change invalidates by recompiling; `compare`
lines up metrics and neuron sets; `render` turns the result into tables.
"""

from neuronspec.report.diff.compare import diff_sides
from neuronspec.report.diff.model import Diff
from neuronspec.report.diff.render import compress, diff_tables, messages
from neuronspec.report.diff.sides import DiffError, Side, check_rev, resolve_side, rev_side
from neuronspec.report.diff.spec import Change, Named, apply_change, spec_changes

__all__ = ["Change", "Diff", "DiffError", "Named", "Side", "apply_change", "check_rev", "compress", "diff_sides",
           "diff_tables", "messages", "resolve_side", "rev_side", "spec_changes"]
