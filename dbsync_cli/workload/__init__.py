"""OpenMRS test fixtures and the seeded workload generator: schema + metadata loading, site activity, ground truth."""

from dbsync_cli.workload.generator import generate, run_workload
from dbsync_cli.workload.openmrs import load_openmrs
from dbsync_cli.workload.truth import GroundTruth, compare

__all__ = ["GroundTruth", "compare", "generate", "load_openmrs", "run_workload"]
