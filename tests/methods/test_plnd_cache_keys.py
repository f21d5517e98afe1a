"""PLND statistics computed by older code are not reused: the stage keys follow the code that
computes the scores (the post-norm closed form in plnd_postnorm, the q/k score in plnd_qk and
its C kernel's source in plnd_qk_cpu, the rotary capture in models/attention, the q/k and post
norms in models/sites) and the top-k rule (plnd.py, in both PLND stages)."""

from __future__ import annotations

import shutil
from pathlib import Path

from neuronspec.plan.kinds import KINDS
from neuronspec.plan.fingerprint import fingerprints

PACKAGE = Path(__file__).resolve().parents[2] / "neuronspec"


def test_plnd_stage_keys_cover_the_score_code_and_change_with_it(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "neuronspec", ignore=shutil.ignore_patterns("__pycache__"))
    refs = {k: KINDS[k].code for k in ("stats.plnd", "select.plnd")}
    before = fingerprints(refs, tmp_path)
    for part in ("methods/plnd.py", "methods/plnd_postnorm.py", "methods/plnd_qk.py", "methods/plnd_qk_cpu.py",
                 "models/attention.py", "models/sites.py"):
        assert f"neuronspec/{part}" in before["stats.plnd"].parts, part
    assert "neuronspec/methods/plnd.py" in before["select.plnd"].parts  # topk_intersect's selection
    qk = tmp_path / "neuronspec" / "methods" / "plnd_qk.py"
    qk.write_text(qk.read_text(encoding="utf-8").replace("QK_QUERY_BLOCK = 16", "QK_QUERY_BLOCK = 8"), encoding="utf-8")
    after = fingerprints(refs, tmp_path)
    assert after["stats.plnd"].changed(before["stats.plnd"].parts) == ["neuronspec/methods/plnd_qk.py"]
