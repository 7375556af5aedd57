"""fedvlm: federated learning of vision-language models on a frozen CLIP.

Importing the package stays cheap (no torch import); the first statement makes torchvision
importable beside a CPU-only torch (see ``fedvlm._torchvision_compat``).
"""

from fedvlm import _torchvision_compat

_torchvision_compat.install()

__version__ = "0.1.0"
