"""Shared fixtures: loads moeq's torch-op library so tests reach torch.ops.moeq.*."""
import os

import pytest
import torch


def _load_ops():
    lib = os.environ.get("MOEQ_KERNELS_LIB")
    if not lib:
        build = os.environ.get("MOEQ_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
        lib = os.path.join(build, "kernels", "libmoeq_kernels.so")
    torch.ops.load_library(lib)
    return torch.ops.moeq


@pytest.fixture(scope="session")
def moeq_ops():
    return _load_ops()
