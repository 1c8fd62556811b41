"""How long a config takes to resolve (render + parse) and build.

Times the largest config of examples/config_tour, or a generated config of about 500 nodes if that is
larger, and prints the median of N runs:

    python benchmarks/config_speed.py [--runs N] [--nodes 500]

Each run starts from a fresh environment (templates are compiled again), as a command-line run would.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forgather.config.environment import ConfigEnvironment  # noqa: E402
from forgather.config.graph import Config, load_config  # noqa: E402
from forgather.config.nodes import iter_nodes  # noqa: E402
from forgather.project import MetaConfig, project_globals  # noqa: E402

TOUR = REPO / "examples" / "config_tour"
GOAL_S = 0.5


def generated_text(nodes: int) -> str:
    """A config of about `nodes` graph nodes: layers of four nodes each, plus a few around them."""
    layers = max(1, nodes // 4)
    lines = [".define: &act !partial:max [0]", "layers: &layers !dlist:@layers"]
    for i in range(layers):
        lines += [
            f"    layer_{i}: !singleton:named_dict",
            f"        index: {i}",
            f"        weights: !factory:list [[{i}, {i + 1}]]",
            f'        scale: !call:float "{i}.5"',
            f'        tags: !tuple [layer, "{i}"]',
            "        activation: *act",
        ]
    lines += ["main: !dict:@main", "    layers: *layers", "    count: !call:len [*layers]"]
    return "\n".join(lines) + "\n"


def node_count(config: Config) -> int:
    return sum(1 for _ in iter_nodes(config.graph))


class Subject:
    """Something to time: a tour config (by template name) or generated text."""

    def __init__(self, label: str, template: str | None = None, text: str | None = None):
        self.label, self.template, self.text = label, template, text
        self.meta = MetaConfig.load(TOUR)

    def resolve(self) -> Config:
        env = ConfigEnvironment(self.meta.searchpath, project_globals(TOUR, None))
        if self.text is not None:
            env.add_template("generated.yaml", self.text)
            return load_config(env, "generated.yaml")
        return load_config(env, self.template)

    @staticmethod
    def build(config: Config) -> object:
        builder = config.builder(output_dir="/tmp/benchmark")
        return {name: builder.build(config.target(name)) for name in config.targets}


def choose(nodes: int) -> tuple[Subject, int]:
    """The tour's largest config, or the generated one if it has more nodes."""
    meta = MetaConfig.load(TOUR)
    candidates = [
        Subject(f"examples/config_tour {name}", f"{meta.config_prefix}/{name}")
        for name in meta.config_names()
    ]
    candidates.append(Subject(f"generated config (~{nodes} nodes)", text=generated_text(nodes)))
    sized = [(subject, node_count(subject.resolve())) for subject in candidates]
    return max(sized, key=lambda item: item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs (median reported)")
    parser.add_argument("--nodes", type=int, default=500, help="size of the generated config")
    options = parser.parse_args()

    subject, nodes = choose(options.nodes)
    print(f"timing: {subject.label}: {nodes} graph nodes, {options.runs} runs (median)")
    subject.build(subject.resolve())  # warm-up: imports, file modules

    resolve_times, build_times, totals = [], [], []
    for _ in range(options.runs):
        start = time.perf_counter()
        config = subject.resolve()
        resolved = time.perf_counter()
        subject.build(config)
        built = time.perf_counter()
        resolve_times.append(resolved - start)
        build_times.append(built - resolved)
        totals.append(built - start)

    print(f"resolve (render+parse): {statistics.median(resolve_times):.3f} s")
    print(f"build (every target):   {statistics.median(build_times):.3f} s")
    total = statistics.median(totals)
    print(f"resolve+build: {total:.3f} s (goal <= {GOAL_S} s)")


if __name__ == "__main__":
    main()
