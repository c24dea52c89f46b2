"""One simulated host of the scale bench: the real ``operator agent`` with a SIMULATED container engine.

    python -m bench.sim_agent [--start-latency SECONDS] <operator agent flags>

Everything but the engine is the real agent (`consul_operator.daemons.agent.run_agent`
with the flags of ``operator agent``): its watches, election, scheduler,
host loop and status reports. The engine is `bench.sim_engine`'s in-memory
simulation. Only `bench.scale` starts this; no test of the real loop does.
"""

from __future__ import annotations

import argparse
import sys

from bench.sim_engine import SimulatedDockerActuator
from consul_operator.adapters.logs import configure as configure_logs
from consul_operator.adapters.registry_auth import PullAuth
from consul_operator.cli.main import agent_config, build_parser
from consul_operator.daemons.agent import AgentConfig, run_agent


def main(argv: list[str]) -> int:
    ours = argparse.ArgumentParser(prog="bench.sim_agent", add_help=False)
    ours.add_argument("--start-latency", type=float, default=0.0)
    known, rest = ours.parse_known_args(argv)
    args = build_parser().parse_args(["agent", *rest])
    configure_logs(args.log_level, json=True, daemon="agent", host=args.host)

    def engine(config: AgentConfig, _pull_auth: PullAuth) -> SimulatedDockerActuator:
        return SimulatedDockerActuator(
            cluster=config.cluster,
            host=config.host,
            advertise=config.advertise,
            start_latency=known.start_latency,
        )

    return run_agent(agent_config(args), engine=engine)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
