"""svctrace: see why a Kubernetes Service request goes wrong, from syscalls alone."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("svctrace")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+src"
