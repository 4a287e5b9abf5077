"""The inclinet workflow: one DAG of the stages, handed to the local, SLURM or Pegasus engine."""
