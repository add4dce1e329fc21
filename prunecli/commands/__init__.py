"""One module per command; each only wires config -> library calls -> report.

Importing this package prepares what composing a command's config needs: the rank variables of
a multi-task SLURM step (read by the output folder's resolvers) and the resolvers themselves.
It happens here, not only in the console script, because Hydra's launchers (submitit on a
cluster, joblib's worker processes) run a command's function in a fresh process that imports it
from here and composes the job's config there.
"""

from prunecli.config.store import register_resolvers
from prunecli.engine.slurm import adopt_slurm_environment

adopt_slurm_environment()
register_resolvers()
