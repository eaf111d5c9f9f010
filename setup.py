"""Build the Cython hot path in _core/.

Switches (environment): DELTAFORGE_DEBUG=1 keeps asserts and bounds checks,
DELTAFORGE_COVERAGE=1 enables line tracing. Without a C compiler or Cython the
package still installs and runs on the pure-Python twins (slower).
"""

import os

from setuptools import Extension, setup

DEBUG = os.environ.get("DELTAFORGE_DEBUG") == "1"
COVERAGE = os.environ.get("DELTAFORGE_COVERAGE") == "1"


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE", "1")] if COVERAGE else []
    args = ["-O0", "-g"] if DEBUG else ["-O2"]
    mods = [
        Extension(
            "deltaforge._core." + name,
            [f"_core/{name}.pyx"],
            define_macros=macros,
            extra_compile_args=args,
        )
        for name in ("resp", "rowdecode")
    ]
    return cythonize(
        mods,
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "linetrace": COVERAGE,
        },
    )


# Packages and metadata live in pyproject.toml; this file only adds the extensions.
setup(ext_modules=extensions())
