"""The one part of the build pyproject.toml cannot state yet without a warning: the compiled
raw-BSON hot path (cdc_migrator/core/_rawbson.c, docs/benchmarks.md "Issue 27, round 3").

It is optional. Where no C compiler is at hand the package installs without it and runs the
Python code it is the exact counterpart of (slower per document, the same results);
``cdc-migrator --version`` says which of the two is running.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cdc_migrator.core._rawbson", ["cdc_migrator/core/_rawbson.c"],
                             optional=True)])
