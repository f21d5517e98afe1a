"""Study files: Pydantic models, YAML loading with file:line:col errors, set expressions."""

from neuronspec.spec.errors import Location, Problem, StudyError
from neuronspec.spec.loader import LoadedStudy, load_study
from neuronspec.spec.detection import PLNDSpec
from neuronspec.spec.models import (
    SITES,
    ArmSpec,
    CorpusSpec,
    ModelSpec,
    Quantile,
    Study,
)

__all__ = [
    "SITES", "ArmSpec", "CorpusSpec", "LoadedStudy", "Location", "ModelSpec", "PLNDSpec", "Problem",
    "Quantile", "Study", "StudyError", "load_study",
]
