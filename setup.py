"""Build the Cython hot path in _core/.

Build switches (environment variables, read at build time):

- ``DELTAFORGE_DEBUG=1``: ``-O0 -g``, C ``assert`` on (``NDEBUG`` undefined), Cython
  ``boundscheck``, ``wraparound`` and ``initializedcheck`` on (an out-of-range index raises
  IndexError instead of reading past a buffer), and ``_core/*.html`` annotations (the
  ``cython -a`` view: yellow lines call into Python).
- ``DELTAFORGE_SANITIZE=address,undefined`` (any of ``address``, ``undefined``, ``leak``):
  compile and link with ``-fsanitize=...``. ASan needs its runtime loaded first:
  ``LD_PRELOAD=$(cc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 python -m pytest``.
- ``DELTAFORGE_COVERAGE=1``: line tracing (``CYTHON_TRACE``) for coverage of the .pyx.

The variants' generated C goes to ``build/cython-<variant>/`` so a switched build never reuses
the release ``_core/*.c`` (cythonize only compares timestamps). Switching back to a release
build needs ``python setup.py build_ext --inplace --force`` (the debug .so is newer than its C).

A missing or broken compiled module makes ``deltaforge._accel`` fall back to the pure-Python
twins (slower), or fail when ``DELTAFORGE_REQUIRE_EXT=1`` (CI).
"""

import os
import sys

from setuptools import Extension, setup

DEBUG = os.environ.get("DELTAFORGE_DEBUG") == "1"
COVERAGE = os.environ.get("DELTAFORGE_COVERAGE") == "1"
_SANITIZERS = ("address", "undefined", "leak")
SANITIZE = [s.strip() for s in os.environ.get("DELTAFORGE_SANITIZE", "").split(",") if s.strip()]
_bad = [s for s in SANITIZE if s not in _SANITIZERS]
if _bad:
    sys.exit(f"error: DELTAFORGE_SANITIZE={os.environ['DELTAFORGE_SANITIZE']}: unknown sanitizer "
             f"{', '.join(_bad)} (fix: a comma-separated subset of {', '.join(_SANITIZERS)})")


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE", "1")] if COVERAGE else []
    args = ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O2"]
    link_args: list[str] = []
    if SANITIZE:
        flag = "-fsanitize=" + ",".join(SANITIZE)
        args += [flag, "-fno-omit-frame-pointer", "-g"]
        link_args.append(flag)
    variant = "-".join((["debug"] if DEBUG else []) + (["coverage"] if COVERAGE else []))
    mods = [
        Extension(
            "deltaforge._core." + name,
            [f"_core/{name}.pyx"],
            depends=["_core/df_cursor.pxd", "_core/df_write.pxd", "_core/df_resp.pxd", "_core/rowvalues.pxi"],  # rebuild + sdist
            define_macros=macros,
            extra_compile_args=args,
            extra_link_args=link_args,
        )
        for name in ("resp", "rowdecode", "framing", "eventbuf", "streamcommit", "ring")
    ]
    return cythonize(
        mods,
        language_level=3,
        include_path=["_core"],  # the shared .pxd (df_cursor, df_write, df_resp): cimport only
        build_dir=f"build/cython-{variant}" if variant else None,
        annotate=DEBUG,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "cdivision": True,
            "linetrace": COVERAGE,
        },
    )


# Packages and metadata live in pyproject.toml; this file only adds the extensions.
setup(ext_modules=extensions())
