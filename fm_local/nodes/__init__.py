"""Node types: one module each (``fm_local.nodes.<type>``), declaring the type's model
class, its ``Kind`` and its evaluation or worker task; :mod:`fm_local.nodes.kinds`
lists them. The code worker processes run is in :mod:`fm_local.runners`.

``fm_local.model`` builds the ``Node`` union from these modules (it imports them at
its end, after ``NodeBase`` and ``Graph``, which they build on): importing it first,
here, lets any of them be imported first.
"""

import fm_local.model  # noqa: F401
