"""Every stage kind with the model on a pretend CUDA device (tests/fake_cuda.py).

Studies run on GPUs, tests on CPUs: a tensor made on the host next to the model's activations
passes every CPU test and stops a user's GPU run (issue #12: Integrated Gradients did). Here the
study of benchmarks/gpu_check.py runs with `device: cuda` through the real loading code, and any
call that would mix devices on a GPU raises CUDA's own error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fake_cuda import fake_cuda
from tiny_studies import run_each_kind, write_every_kind_study

from neuronspec.plan.kinds import KINDS

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None


#: the other code paths of the same kinds: packed batches, the cheap attribution, every position of
#: the logit lens without the final norm, the top-k rule, LAPE on the neuron itself, evaluation of
#: every arm's neurons on every language, bfloat16 weights (how GPU users run) and an explicit ordinal
OTHER_PATHS = ["model.dtype=bfloat16", "model.device=cuda:0", "detect.plnd.batch_tokens=64",
               "detect.plnd.rule=topk_intersect", "detect.lape.batch_tokens=64", "detect.lape.event=neuron",
               "detect.linguafranca.batch_tokens=64", "detect.sharing.attribution.method=activation_norm",
               "analyses.logit_lens.positions=all", "analyses.logit_lens.final_norm=false",
               "evaluate.ppl.batch_tokens=64", "evaluate.ppl.on=all", "evaluate.choice.batch_tokens=64"]


@pytest.mark.filterwarnings("ignore::neuronspec.methods.attribution.CompletenessWarning")  # IG, 8 steps, random model
@pytest.mark.parametrize("overrides", [[], OTHER_PATHS], ids=["study", "other-paths"])
def test_every_stage_kind_runs_with_the_model_on_a_cuda_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               overrides: list[str]) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    # the q/k score compiles its kernel for CUDA models; torch.compile's CUDA backend needs a real GPU
    # (on a CPU build it fails, and the kernel would stay off for the rest of the process): eager here
    monkeypatch.setenv("NEURONSPEC_QK_COMPILE", "0")
    study = write_every_kind_study(tmp_path, device="cuda", dtype="float32", lm_eval=HAS_LM_EVAL)
    failed, on_device, seen = {}, {}, 0
    with fake_cuda() as device:
        for run in run_each_kind(study, tmp_path / ".neuronspec", overrides):
            if run.error is not None:
                failed[run.kind] = f"{type(run.error).__name__}: {run.error} ({run.where()})"
            on_device[run.kind], seen = device.calls > seen, device.calls
    # every registered kind ran (a new kind must join tiny_studies.EVERY_KIND), lm-eval's when installed
    assert set(on_device) == set(KINDS) - (set() if HAS_LM_EVAL else {"eval.lm_eval"})
    assert not failed, "stage kinds that would fail on a GPU:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items())
    # and the model really was on the pretend device for every kind that loads it
    assert all(on_device[kind] for kind in on_device if KINDS[kind].loads_model), on_device
