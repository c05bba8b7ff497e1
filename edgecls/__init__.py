"""edgecls: from a folder of labelled photos to a measured, deployed image classifier on an edge device."""
__version__ = "0.1.0"

from .errors import EdgeclsError  # noqa: E402  (light: no heavy imports)

__all__ = ["__version__", "EdgeclsError", "Classifier"]


def __getattr__(name: str):
    # Lazy so `import edgecls` stays light on a device.
    if name == "Classifier":
        from .runtime import Classifier

        return Classifier
    raise AttributeError(name)
