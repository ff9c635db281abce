"""Build hook: trainproof's native pieces, the parallel SHA-256 tree hasher and the canonical
IR's kernels (both optional: pure-Python/torch fallbacks compute the same bits, slower).

Metadata lives in pyproject.toml; this file only declares the C extensions.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "protocol._treehash",
            sources=["protocol/_treehash.c"],
            extra_compile_args=["-O3", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        Extension(
            "replay.execute._kernels",
            sources=["replay/execute/_kernels.c"],
            # only explicit fmaf: never let the compiler contract anything else
            extra_compile_args=[
                *("-O3", "-std=c11", "-fopenmp"),
                *("-ffp-contract=off", "-fno-math-errno"),
            ],
            # libgomp by soname: in a process that imported torch, torch's own copy (one pool)
            extra_link_args=["-fopenmp", "-lm"],
            optional=True,
        ),
    ]
)
