"""The discrete tasks of da Silva et al. (NeurIPS 2024, "On Divergence Measures for Training
GFlowNets", §5.2 and App. B/E) as targets of tests/benchmarks/objectives_study.py.

Each task is an unconditional GFlowNet environment (one input, B = 1) written against the
engine's `Trajectories` contract (DESIGN.md §2): batched sampling with per-step terms and
forward-looking flows, an exact log Z, and an `l1(sampler)` to the exact target R/Z. Each
brings the paper's settings as attributes (lr, lr_flows, anneal, samples_per_input).
"""
from divergence_tasks.phylo import PhyloTask
from divergence_tasks.sequences import SequencesTask
from divergence_tasks.sets import SetsTask

TASKS = {   # each takes the task options below as keywords
    "sets": lambda **kw: SetsTask(32, 16, name="sets", **kw),              # the paper's size, MC L1
    "sets-small": lambda **kw: SetsTask(12, 6, name="sets-small", **kw),   # 924 sets, exact L1
    "sequences": lambda **kw: SequencesTask(8, 6, name="sequences", **kw),  # 299 592 sequences
    "phylo": lambda **kw: PhyloTask(7, 25, name="phylo", **kw),            # 10 395 trees, exact
}

#: The options each task takes (objectives_study.py flags of the same names): `seed` draws the
#: task's data (f; f and g; the tree and sequences), `reward_scale` multiplies the Sequences
#: log-reward, `policy` picks the Phylogenetics network.
TASK_OPTIONS = {"sets": ("seed",), "sets-small": ("seed",), "sequences": ("seed", "reward_scale"),
                "phylo": ("seed", "policy")}

#: da Silva et al. (2024), Table 1: final L1 (mean, sd) over 3 seeds, α = 0.5 (copied from
#: issue 18). "sets-small" has no paper value.
PAPER_TABLE1 = {
    "sets": {"tb": (0.07, 0.00), "reverse_kl": (0.03, 0.00), "forward_kl": (0.03, 0.00),
             "renyi": (0.03, 0.00), "tsallis": (0.03, 0.00)},
    "sequences": {"tb": (0.28, 0.06), "reverse_kl": (0.16, 0.06), "forward_kl": (0.23, 0.12),
                  "renyi": (0.23, 0.10), "tsallis": (0.22, 0.09)},
    "phylo": {"tb": (0.22, 0.04), "reverse_kl": (0.21, 0.04), "forward_kl": (0.22, 0.04),
              "renyi": (0.22, 0.03), "tsallis": (0.21, 0.04)},
}

__all__ = ["SetsTask", "SequencesTask", "PhyloTask", "TASKS", "TASK_OPTIONS", "PAPER_TABLE1"]
