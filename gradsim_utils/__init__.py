"""gradsim_utils: the small package every chapter of the gradsim book imports."""
from . import cache, profiles

__all__ = ["cache", "profiles"]
__version__ = "0.1.0"
