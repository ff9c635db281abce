"""Build hook: the one native piece of trainproof, the parallel SHA-256 tree hasher.

Metadata lives in pyproject.toml; this file only declares the C extension.
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
        )
    ]
)
