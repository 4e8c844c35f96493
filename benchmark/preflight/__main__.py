"""`python -m benchmark.preflight experiment=NAME [launcher=slurm --profile FILE] [key=value ...]`

Everything that can fail before a sweep reaches the cluster, checked on the login node, offline, in
about a minute, with every failure in one listing: the run configs, the concepts' images, the
weights (in the cache, and loading with the network off), Custom Diffusion's class images, the
results folder, and the Slurm partition (where `sinfo` answers). Then the GPU-hours per method x
strategy and the time limit each Slurm job will request, from the timing profile the launcher names.
`python -m benchmark.sweep` runs the same checks before it submits anything. Exit 0 when all pass,
2 otherwise. Same arguments as the sweep (`python -m benchmark.sweep --help`).
"""

import sys

from benchmark.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main(["preflight", *sys.argv[1:]]))
