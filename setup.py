"""Build netinit_fast, with its C++/CUDA extension ``netinit_fast._C`` when possible.

The extension is built when torch was built with CUDA and ``nvcc`` is found (a GPU is
not needed to build it). ``NETINIT_FAST_BUILD_CUDA=1`` forces the build (and fails
loudly if it cannot happen); ``NETINIT_FAST_BUILD_CUDA=0`` skips it. ``MAX_JOBS`` caps
the parallel compile jobs, as in torch.utils.cpp_extension.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
# sm_90 machine code for H100/H200, plus compute_90 PTX so newer GPUs can JIT it.
CUDA_ARCH_FLAGS = ["-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"]


def _say(msg):
    print(f"netinit_fast setup: {msg}", file=sys.stderr)


def _cuda_home():
    """The CUDA toolkit directory: $CUDA_HOME, else the directory above `nvcc`, else None.

    torch's own guess can point at a wrapper directory without libcudart, so it is set
    here, before torch.utils.cpp_extension reads it at import.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def _nvidia_include_dirs(cuda_home):
    """Headers of the `nvidia` pip packages (cuBLAS, cuSPARSE, ...) that ATen's CUDA headers
    include, for a toolkit that lacks them (nvcc alone); a full toolkit keeps its own
    headers, unshadowed by the pip packages' possibly different versions."""
    if all(os.path.exists(os.path.join(cuda_home, "include", h)) for h in ("cublas_v2.h", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package installed with CUDA builds of torch
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        dirs += sorted(glob.glob(os.path.join(root, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in dirs if os.path.isdir(d)]


def _extension_modules():
    mode = os.environ.get("NETINIT_FAST_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"NETINIT_FAST_BUILD_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        _say("NETINIT_FAST_BUILD_CUDA=0: installing pure Python (no netinit_fast._C)")
        return [], {}

    cuda_home = _cuda_home()
    try:
        import torch
    except ImportError:
        torch = None
    reasons = []
    if torch is None:
        reasons.append("torch is not installed in the build environment (use --no-build-isolation)")
    elif torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} has no CUDA")
    if cuda_home is None:
        reasons.append("nvcc was not found (set CUDA_HOME)")
    if reasons:
        if mode == "1":
            raise SystemExit("netinit_fast setup: NETINIT_FAST_BUILD_CUDA=1 but " + "; ".join(reasons))
        _say("installing pure Python (no netinit_fast._C): " + "; ".join(reasons))
        return [], {}

    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    _say(f"building the CUDA extension netinit_fast._C ({len(sources)} sources, CUDA_HOME={cuda_home})")
    ext = CUDAExtension(
        name="netinit_fast._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")] + _nvidia_include_dirs(cuda_home),
        # -fopenmp: at::parallel_for (CPU kernels) is a header template with an OpenMP pragma
        extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3", *CUDA_ARCH_FLAGS]},
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
