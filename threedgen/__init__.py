"""threedgen: text-to-3D and text-to-4D generation by score distillation.

Importing the package is cheap: modules are found through ``threedgen.registry`` by name and
imported only when a config uses them; diffusers, transformers and the CUDA libraries are never
imported here.
"""

__version__ = "0.1.0"

from .schedule import Schedule  # noqa: E402

__all__ = ["Schedule", "__version__"]
