"""Shared fixtures: loads moeq's torch-op library so tests reach torch.ops.moeq.*."""
import os

import pytest
import torch


def _build_dir():
    return os.environ.get("MOEQ_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))


def _load_ops():
    lib = os.environ.get("MOEQ_KERNELS_LIB")
    if not lib:
        lib = os.path.join(_build_dir(), "kernels", "libmoeq_kernels.so")
    torch.ops.load_library(lib)
    return torch.ops.moeq


@pytest.fixture(scope="session")
def moeq_ops():
    return _load_ops()


@pytest.fixture(scope="session")
def moeq_quant_ops(moeq_ops):
    """torch.ops.moeq with the scheme-level ops of libmoeq_quant.so (loaded after the kernels)."""
    torch.ops.load_library(os.path.join(_build_dir(), "core", "quant", "libmoeq_quant.so"))
    return torch.ops.moeq
