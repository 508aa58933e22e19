// Not a kernel: how matmul.wgsl and gemm.wgsl take their operands, pasted in by `#include
// operand`. With F16_OPERANDS (mixed-precision training) every element of A and B is rounded
// to f16 as it is loaded, then multiplied and accumulated in f32: the products of f16 tensor
// cores, on any adapter. A magnitude past f16's range becomes an infinity of its sign (the
// packing's result is indeterminate there), so that loss scaling sees the overflow and skips
// the step.
fn operand(v: vec4<f32>) -> vec4<f32> {
#if F16_OPERANDS
    let h = vec4<f32>(unpack2x16float(pack2x16float(v.xy)), unpack2x16float(pack2x16float(v.zw)));
    // 65520 is where round-to-nearest-even reaches f16's infinity; v · 1e38 overflows to ±inf.
    return select(h, v * 1e38, abs(v) >= vec4<f32>(65520.0));
#else
    return v;
#endif
}
