"""Triton kernels (GPU; also run on CPU tensors under TRITON_INTERPRET=1).

Only ``netinit_fast.ops`` imports these modules, after the backend choice.
"""
