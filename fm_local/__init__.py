"""fm_local: a durable, parallel workflow engine for one machine.

The public surface for node code is small: :class:`FatalError` (fail without retry)
and the ``ctx`` object passed to python nodes that declare a ``ctx`` parameter.
"""

from fm_local.errors import FatalError, NodeError

__all__ = ["FatalError", "NodeError", "__version__"]
__version__ = "0.1.0"
