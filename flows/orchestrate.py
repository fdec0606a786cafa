"""Deployable flow entrypoint: `flows/orchestrate.py:orchestrate`, used by prefect.yaml.

The flow lives in `toka_agents.orchestration.deployments`; it takes the config paths (or an
inline config) as parameters, so one deployment runs any orchestration, and its parameters are
the run form the Prefect UI shows.
"""

from toka_agents.orchestration.deployments import orchestrate

__all__ = ["orchestrate"]
