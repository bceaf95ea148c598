"""clusterkit: Open-Sora 1.2 on a heterogeneous Slurm GPU cluster.

Light modules only: importing clusterkit never imports torch.
"""

__version__ = "0.1.0"
