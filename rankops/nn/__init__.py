"""nn.Module layers built on the rankops ops."""

from rankops.nn.cin import CIN  # noqa: F401
from rankops.nn.cross import CrossNet  # noqa: F401
