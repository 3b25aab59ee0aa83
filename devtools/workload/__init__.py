"""OpenMRS test fixtures and the seeded workload generator: schema + metadata loading, site activity, ground truth."""

from devtools.workload.generator import generate, run_workload
from devtools.workload.openmrs import load_openmrs
from devtools.workload.truth import GroundTruth, compare

__all__ = ["GroundTruth", "compare", "generate", "load_openmrs", "run_workload"]
