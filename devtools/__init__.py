"""Test and demo tooling (not installed): throwaway services, the workload generator, benchmarks, man pages."""
