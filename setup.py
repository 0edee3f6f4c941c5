"""Build the optional C accelerator; everything else is in pyproject.toml.

The extension is optional: where no C compiler is present the build goes on without it
and backchannel runs on its pure-Python path (docs/design.md, "The accelerator").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backchannel.protocol._speedups",
            sources=["src/backchannel/protocol/_speedups.c"],
            optional=True,
            extra_compile_args=["-O3"],
        )
    ]
)
