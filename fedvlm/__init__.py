"""fedvlm: federated learning of vision-language models on a frozen CLIP.

Importing the package stays cheap (no torch import); the first statement makes torchvision
importable beside a CPU-only torch (see ``fedvlm._torchvision_compat``).
"""

import os

from fedvlm import _torchvision_compat

# Same numbers whatever the number of processes: on a CPU, MKL's sgemm splits small matrix
# products (5-11 rows on our machine) differently with 1 and 2 threads, so a run on 2 processes
# (one thread each) drifted in the last bits from a run on 1 (two threads). MKL's strict
# conditional numerical reproducibility makes them independent of the thread count, at no
# measured cost. MKL reads it at its first call, so this must come before any matrix product.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
_torchvision_compat.install()

__version__ = "0.1.0"
