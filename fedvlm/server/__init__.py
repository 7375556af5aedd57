"""The old home of the algorithms, kept importable: everything lives in :mod:`fedvlm.algorithms`."""

from fedvlm.algorithms import *  # noqa: F401,F403
from fedvlm.algorithms import __all__  # noqa: F401
