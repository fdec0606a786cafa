"""Deployable flow entrypoint: `flows/orchestrate.py:orchestrate`, used by prefect.yaml.

The flow takes the config paths as a parameter, so one deployment runs any orchestration:
the Prefect UI shows its parameters as the run form.
"""

from toka_agents import orchestrate

__all__ = ["orchestrate"]
