"""em_lightning: reproducible ML analysis of electron-microscopy images."""

__version__ = "0.1.0"

# before any Hydra entry point composes its config: conf/hydra/default.yaml uses them
from em_lightning.resume import register_resolvers as _register_resolvers  # noqa: E402

_register_resolvers()
