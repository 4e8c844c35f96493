"""Sweeps: an experiment's grid of runs, executed locally or on Slurm, phases, skip-done, status."""
