"""Package list for setuptools; everything else is in setup.cfg.

The model card templates live in the top-level ``model_cards/`` folder (their one source)
and install as ``reid_transformers.model_cards`` (``package_dir`` in setup.cfg). setup.cfg
cannot list that package beside a ``find:`` of ``src/``, so the list is built here: every
package under ``src/`` is found, as before, and the templates' package is added.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "reid_transformers.model_cards"])
