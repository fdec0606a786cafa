"""The Prefect wing: every module of toka-agents that imports Prefect, but for the entry points
(`cli`, `api`).

- `flow`: Plan -> Prefect flow (`compile_flow`), and what its body does (`execute_plan`);
- `tasks`: the agent task, the LLM step and a person's approval: the Prefect tasks of a run;
- `scheduler`: the loop that starts agents as their requirements complete;
- `cancellation`: the watcher that stops a run's containers once it is cancelled;
- `llm_setup`: Secret blocks and rate limits (Prefect global concurrency limits);
- `reporting`: the only writer of states' messages, artifacts, events and task output logs;
- `resuming`: what a later attempt of a flow run takes from the attempts before it;
- `tagging`: how agent/workstream/priority tags reach a task run;
- `deployments`: the `toka-orchestrate` flow, its run form, `deploy` and `serve`;
- `runs`: starting a deployment's run, stopping a run;
- `watching`: the live view of a run, read from Prefect's API;
- `archives`: the workspace's archive in Prefect's result storage;
- `people`: an agent's question or an approval: a paused run and a person's reply.

The embedded server Prefect starts for a run without `PREFECT_API_URL` inherits this
process's environment: it is told not to send usage statistics off the machine, unless
`PREFECT_SERVER_ANALYTICS_ENABLED` says otherwise.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from toka_agents.orchestration.deployments import FLOW_NAME, deploy, orchestrate, serve
from toka_agents.orchestration.flow import RUN_LABEL, RunOptions, compile_flow, execute_plan
from toka_agents.orchestration.people import answer, approve, reject
from toka_agents.orchestration.reporting import RunSummary

__all__ = [
    "FLOW_NAME",
    "RUN_LABEL",
    "RunOptions",
    "RunSummary",
    "answer",
    "approve",
    "compile_flow",
    "deploy",
    "execute_plan",
    "orchestrate",
    "reject",
    "serve",
]
