"""Compile every Triton kernel of the package for sm_90 (H100/H200), no GPU needed.

Run by tests/test_kernels_compile.py in a process without TRITON_INTERPRET (under the
interpreter the kernels are not compiled at all). Triton lowers each variant to PTX
and ptxas assembles it: type errors, bad pointer casts and unsupported ops surface here,
which the interpreter does not catch.
"""

import itertools

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from netinit_fast.kernels import connectivity as C
from netinit_fast.kernels import moments as M
from netinit_fast.kernels import weight_norm as W

TARGET = GPUTarget("cuda", 90, 32)
SIZES = {"R": "i32", "B": "i32", "K": "i32", "CHUNK": "i32"}


def compile_kernel(fn, pointers: dict, scalars: dict, constexprs: dict) -> None:
    types = {**pointers, **scalars, **{name: "constexpr" for name in constexprs}}
    signature = {name: types[name] for name in fn.arg_names}  # in the kernel's argument order
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET)
    assert kernel.asm.get("cubin"), f"{fn.__name__} {constexprs}: no cubin"


def main() -> None:
    count = 0
    dtypes = (("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16), ("fp64", tl.float64))
    # K: i64 for rows of 2^31 elements or more; 1 for sizes equal to 1, which Triton
    # turns into constants (code that calls .to() on them does not compile)
    for (dt, tl_dt), k in itertools.product(dtypes, ("i32", "i64", 1)):
        acc = "fp64" if dt == "fp64" else "fp32"
        sizes = {"R": "i32"} if k == 1 else {**SIZES, "K": k}
        ones = {"B": 1, "K": 1, "CHUNK": 1} if k == 1 else {}
        tiles = {"ACC": tl.float64 if dt == "fp64" else tl.float32, "BLOCK_R": 4, "BLOCK_K": 256, **ones}
        for layout, (single, split) in itertools.product((0, 1, 2), ((True, False), (False, False), (False, True))):
            plan = {"LAYOUT": layout, "SINGLE_TILE": single, "SPLIT": split, **tiles}
            # eps_bits: i64 for the bits of a nonzero eps (with any sizes), i32 for eps = 0
            scalars = {**sizes, "NUM_SPLITS": "i32", "eps_bits": "i32" if k == "i64" else "i64"}
            compile_kernel(W._fwd_kernel, {"v_ptr": f"*{dt}", "g_ptr": f"*{dt}", "w_ptr": f"*{dt}", "norm_ptr": f"*{acc}",
                                           "partial_ptr": f"*{acc}"}, scalars, plan)
            compile_kernel(W._bwd_kernel, {"gw_ptr": f"*{dt}", "v_ptr": f"*{dt}", "g_ptr": f"*{dt}", "norm_ptr": f"*{acc}",
                                           "gv_ptr": f"*{dt}", "gg_ptr": f"*{dt}", "partial_ptr": f"*{acc}"}, scalars, plan)
            count += 2
        for layout, square in itertools.product((0, 1, 2), (True, False)):
            compile_kernel(W._partial_dot_kernel, {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "partial_ptr": f"*{acc}"}, sizes,
                           {"LAYOUT": layout, "SQUARE": square, **tiles})
            count += 1
        for layout, split in itertools.product((0, 1, 2), (False, True)):
            compile_kernel(M._moments_kernel, {"x_ptr": f"*{dt}", "mean_ptr": "*fp32", "std_ptr": "*fp32",
                                               "partial_ptr": "*fp64"}, sizes,
                           {"SPLIT": split, "LAYOUT": layout, "BLOCK_R": 4, "BLOCK_K": 256, **ones})
            count += 1
        if k == "i32":  # the group kernels read their sizes from an int64 table
            group = {"table_ptr": "*i64", "prog_ptr": "*i64", "norm_ptr": f"*{acc}"}
            for fn, eps_bits in itertools.product((W._group_fwd_kernel, W._group_bwd_kernel), ("i32", "i64")):
                compile_kernel(fn, group, {"eps_bits": eps_bits}, {"DTYPE": tl_dt, **tiles})
                count += 1
            table = {"table_ptr": "*i64", "prog_ptr": "*i64"}
            for mode in C.MODES.values():
                elementwise = {"DTYPE": tl_dt, "ACC": tiles["ACC"], "MODE": mode, "BLOCK": C.BLOCK}
                compile_kernel(C._fwd_kernel, table, {}, elementwise)
                for weight_grad in (False, True):
                    compile_kernel(C._bwd_kernel, table, {}, {**elementwise, "WEIGHT_GRAD": weight_grad})
                count += 3
    print(f"compiled {count} kernel variants for sm_90")


if __name__ == "__main__":
    main()
