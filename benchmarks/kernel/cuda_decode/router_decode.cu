// Gemma 4 router at decode sizes in one CUDA launch (a prototype to time against the
// Triton fused kernel, issue #36; not in the serving path).
//
// Per token t and expert e, the package's rounding contract:
//   logits[t, e] = rsqrt(mean_h x[t,h]^2 + eps) * H^-0.5 * sum_h bf16(x[t,h] * scale[h]) * W[e,h]
// then top-K of softmax(logits[t]) renormalised, times per_expert_scale[id]; equal
// logits go to the lower id; NaN ranks as -inf; ids are K distinct values in [0, E).
//
// One warp per expert (WARPS experts per block): its lanes hold the expert's gate row in
// registers (16-byte loads, issued before griddepcontrol.wait so that a launch with
// programmatic dependent launch overlaps them with the kernel ahead), then take each
// token's dot product and sum of squares in one pass over x. The last block to arrive
// (an atomic counter, reset by that block) routes the tokens, one warp per token, with
// warp shuffles only.
//
// Compile-time: WARPS (experts per block), MAX_CHUNKS (ceil(H / 256): 16-byte chunks per
// lane), SCALE_BF16 (1: scale is bf16, 0: fp32), MAX_K (>= K), E_PER_LANE (ceil(E / 32)).
// Layout: x, W bf16 with rows 16-byte aligned and unit column stride; logits [T, E],
// weights [T, K] fp32 and ids [T, K] int32, row strides given; params = {eps, H^-0.5}.
// No #include: NVRTC builds it without the toolkit's headers (bf16 handled as bits).

#ifndef WARPS
#define WARPS 1
#endif
#ifndef MAX_CHUNKS
#define MAX_CHUNKS 11
#endif
#ifndef SCALE_BF16
#define SCALE_BF16 1
#endif
#ifndef MAX_K
#define MAX_K 8
#endif
#ifndef E_PER_LANE
#define E_PER_LANE 4
#endif

#define FULL_MASK 0xffffffffu

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ void bf16x8_to_float(const uint4 v, float f[8]) {
  const unsigned int u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// fp32 rounded to the nearest bf16 (ties to even), as fp32; finite inputs.
__device__ __forceinline__ float round_to_bf16(float f) {
  unsigned int bits = __float_as_uint(f);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return __uint_as_float(bits & 0xffff0000u);
}

__device__ __forceinline__ void scale8(const void* scale, int chunk, float s[8]) {
#if SCALE_BF16
  bf16x8_to_float(__ldg(reinterpret_cast<const uint4*>(scale) + chunk), s);
#else
  const float4* p = reinterpret_cast<const float4*>(scale) + 2 * chunk;
  const float4 a = __ldg(p), b = __ldg(p + 1);
  s[0] = a.x; s[1] = a.y; s[2] = a.z; s[3] = a.w;
  s[4] = b.x; s[5] = b.y; s[6] = b.z; s[7] = b.w;
#endif
}

// The better of two candidates: the higher logit, the lower id on equal logits.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ void route_token(const float* logits_row, int E, int K, const float* pes,
                            int has_pes, bool padding, float* weights_row, int* ids_row,
                            int lane) {
  float v[E_PER_LANE];
  bool taken[E_PER_LANE];
#pragma unroll
  for (int j = 0; j < E_PER_LANE; ++j) {
    const int e = lane + 32 * j;
    // .cg: the other blocks' stores, made visible by the counter's fences, not stale L1.
    float l = e < E ? __ldcg(logits_row + e) : NEG_INF;
    v[j] = l != l ? NEG_INF : l;  // NaN ranks as -inf
    taken[j] = e >= E;
  }
  float picked[MAX_K];
  int picked_id[MAX_K];
#pragma unroll
  for (int k = 0; k < MAX_K; ++k) {
    if (k >= K) break;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < E_PER_LANE; ++j) {
      const int e = lane + 32 * j;
      if (!taken[j] && better(v[j], e, bv, bi)) {
        bv = v[j];
        bi = e;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float ov = __shfl_xor_sync(FULL_MASK, bv, offset);
      const int oi = __shfl_xor_sync(FULL_MASK, bi, offset);
      if (better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
#pragma unroll
    for (int j = 0; j < E_PER_LANE; ++j) taken[j] |= (lane + 32 * j) == bi;
    picked[k] = bv;
    picked_id[k] = bi;
  }
  // Renormalised top-K of the softmax: the full softmax's denominator cancels.
  const float top = picked[0];
  float total = 0.f;
#pragma unroll
  for (int k = 0; k < MAX_K; ++k)
    if (k < K) total += __expf(picked[k] - top);
#pragma unroll
  for (int k = 0; k < MAX_K; ++k) {
    if (k < K && lane == k) {
      float w = __expf(picked[k] - top) / total;
      if (has_pes) w *= __ldg(pes + picked_id[k]);
      weights_row[k] = padding ? 0.f : w;
      ids_row[k] = padding ? -1 : picked_id[k];
    }
  }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 1)
gemma4_router_decode(const unsigned short* __restrict__ x, int stride_xt,
                     const void* __restrict__ scale, const unsigned short* __restrict__ w,
                     int stride_we, const float* __restrict__ pes, int has_pes,
                     const float* __restrict__ params, float* logits, int stride_lt,
                     float* weights, int stride_wt, int* ids, int stride_it,
                     const unsigned char* __restrict__ padding, int has_padding,
                     unsigned int* counter, int T, int H, int E, int K) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int e = blockIdx.x * WARPS + warp;
  const int chunks = H >> 3;
  const uint4* w_row = reinterpret_cast<const uint4*>(w + (long long)e * stride_we);

  uint4 w_reg[MAX_CHUNKS];
#pragma unroll
  for (int i = 0; i < MAX_CHUNKS; ++i) {
    const int c = lane + 32 * i;
    w_reg[i] = (e < E && c < chunks) ? __ldg(w_row + c) : make_uint4(0u, 0u, 0u, 0u);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  const float eps = params[0];
  const float inv_sqrt_h = params[1];
  for (int t = 0; t < T; ++t) {
    const uint4* x_row = reinterpret_cast<const uint4*>(x + (long long)t * stride_xt);
    float acc = 0.f, sumsq = 0.f;
#pragma unroll
    for (int i = 0; i < MAX_CHUNKS; ++i) {
      const int c = lane + 32 * i;
      if (c < chunks) {
        float xf[8], sf[8], wf[8];
        bf16x8_to_float(__ldg(x_row + c), xf);
        scale8(scale, c, sf);
        bf16x8_to_float(w_reg[i], wf);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          sumsq = fmaf(xf[j], xf[j], sumsq);
          // The GEMM operand rounded once to bf16, as the tensor-core path rounds it.
          const float operand = round_to_bf16(xf[j] * sf[j]);
          acc = fmaf(operand, wf[j], acc);
        }
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      acc += __shfl_xor_sync(FULL_MASK, acc, offset);
      sumsq += __shfl_xor_sync(FULL_MASK, sumsq, offset);
    }
    if (lane == 0 && e < E)
      logits[(long long)t * stride_lt + e] = acc * rsqrtf(sumsq / H + eps) * inv_sqrt_h;
  }

  __shared__ bool is_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this block's logits before its arrival
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // every other block's logits after their arrivals
  for (int t = warp; t < T; t += WARPS) {
    const bool pad = has_padding && padding[t] != 0;
    route_token(logits + (long long)t * stride_lt, E, K, pes, has_pes, pad,
                weights + (long long)t * stride_wt, ids + (long long)t * stride_it, lane);
  }
  __syncthreads();
  if (threadIdx.x == 0) *counter = 0u;  // ready for the next stream-ordered launch
}
