"""Server modes: how the trunk trains when clients are connected. A new mode is one module here and one
line in ``MODES``; ``splitfed serve --mode`` offers every three-part mode of the registry."""

from __future__ import annotations

from splitfed.layout import Layout
from splitfed.server.modes.base import Mode, StepBook, SubServerMode
from splitfed.server.modes.client_batch import ClientBatchMode
from splitfed.server.modes.hierarchical import HierarchicalMode
from splitfed.server.modes.sequential import SequentialMode
from splitfed.server.modes.two_part import TwoPartMode
from splitfed.server.settings import THREE_PART_MODES

MODES: dict[str, type[SubServerMode]] = {
    SequentialMode.name: SequentialMode,
    ClientBatchMode.name: ClientBatchMode,
    HierarchicalMode.name: HierarchicalMode,
    TwoPartMode.name: TwoPartMode,
}

_THREE_PART = {name for name, mode in MODES.items() if mode.layout == Layout.THREE_PART}
if set(THREE_PART_MODES) != _THREE_PART:  # a mode added here must be named in the settings too
    raise RuntimeError(f"server modes {sorted(_THREE_PART)} differ from the settings' {THREE_PART_MODES}")

__all__ = ["MODES", "ClientBatchMode", "HierarchicalMode", "Layout", "Mode", "SequentialMode", "StepBook",
           "SubServerMode", "TwoPartMode"]
