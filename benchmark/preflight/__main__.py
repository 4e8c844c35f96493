"""`python -m benchmark.preflight experiment=NAME [launcher=slurm profile=FILE] [key=value ...]`: the
sweep's checks and its cost, nothing submitted (`--help` explains the keys)."""

import sys

from benchmark.sweep.cli import main

PROG = "python -m benchmark.preflight"
HELP = f"""\
usage: {PROG} experiment=NAME [launcher=slurm profile=FILE] [key=value ...]

Everything that can fail before a sweep reaches the cluster, checked on the login node, offline, in
about a minute, with every failure in one listing: the run configs, the concepts' images, the weights
(in the cache, and loading with the network off), Custom Diffusion's class images, the results
folder, and the Slurm partition (where `sinfo` answers). Then the GPU-hours per method x strategy and
the time limit each Slurm job will request, from the timing profile the launcher names. The sweep
runs the same checks before it submits anything. Exit 0 when all pass, 2 otherwise.

keys (the same as `python -m benchmark.sweep`):
  experiment=NAME    the grid (required)
  method=A,B         only these methods of the grid; likewise strategy=, concept=, seed=
  launcher=slurm     price and check for Slurm; launcher.KEY=VALUE sets one launcher key
  profile=FILE       launcher keys merged over the launcher config (e.g. slurm/a100.yaml)
  KEY=VALUE          any other key is a run config override for every run

examples:
  {PROG} experiment=table1 launcher=slurm profile=slurm/a100.yaml
  {PROG} experiment=smoke
"""

if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(HELP, end="")
        sys.exit(0)
    sys.exit(main(["preflight", *sys.argv[1:]]))
