"""prunecli: structured channel pruning of CNNs under a cost budget.

The Python API lives in the subpackages (``prunecli.models``, ``prunecli.data``,
``prunecli.engine``, ``prunecli.methods``); importing ``prunecli`` itself stays cheap so the
command line starts fast.
"""

__version__ = "0.1.0"
