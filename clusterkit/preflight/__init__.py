"""Preflight: measure a node (probes), judge it (checks), say what to fix (remedies).

``run_preflight`` (api.py) is the entry point; ``collect_facts`` (probes.py) and
``run_checks`` (checks.py) are the two halves. Importing this package imports neither torch
nor pynvml nor psutil: the probes import them when they run.
"""

from clusterkit.preflight.api import run_preflight
from clusterkit.preflight.checks import CheckResult, run_checks, run_job_checks
from clusterkit.preflight.probes import Host, collect_facts

__all__ = ["CheckResult", "Host", "collect_facts", "run_checks", "run_job_checks", "run_preflight"]
