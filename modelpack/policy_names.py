"""The names of the edge's routing policies (`EDGE_POLICY`): the one place they are listed.

The edge builds a policy by name (`edge_container.policies.make_policy`, one class each), its settings
refuse any other name at start-up, and the Greengrass component checks its `Policy` option against the
same list (`infra.greengrass.recipe`), so a device is never deployed with a policy its edge does not have.
A new policy adds its class there and its name here; `tests/edge_container/test_settings.py` pins that the
two agree.
"""

from __future__ import annotations

from typing import Final

POLICY_NAMES: Final = ("threshold", "margin", "entropy", "adaptive", "paced", "shift_aware", "random",
                       "edge_only", "cloud_only")
