// Fused single-pass optimizer kernels for XLA:CPU, called through jax.ffi.
//
// XLA:CPU writes each output array of an elementwise computation in its own
// loop, so an Adam step (new params, new first and second moments) is three
// passes over memory, and the params pass reads back the moments the first two
// wrote. These kernels compute every output of one element in one loop
// iteration: each input and output is touched once.
//
// Every kernel has the same operands, for L float32 leaves of any shapes and S
// state slots per leaf (Adam: mu, nu; momentum: trace; RMSProp: nu):
//   scalars       f32[K]  the step's scalars (below)
//   leaf_scalars  f32[L]  one value per leaf (Adam: the leaf's weight decay)
//   params[L], grads[L], slot_1[L], ..., slot_S[L]
// and results params[L], slot_1[L], ..., slot_S[L], which the caller aliases to
// the inputs (in place under donation). The formulas follow accel_jax's
// transformations operation by operation (accel_jax/fused.py has each one in
// jax.numpy as the reference):
//
// accel_jax_adam_f32, K = 9: b1, 1-b1, b2, 1-b2, bc1, bc2, eps_root, eps, -lr
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g)
//   p = p + ((m/bc1) / (sqrt(v/bc2 + eps_root) + eps) + wd*p) * (-lr)
// accel_jax_momentum_f32, K = 4: beta, a, c, nesterov (0 or 1)
//   h = g*a;  t = beta*t + h;  u = nesterov ? h + beta*t : t;  p = p + u*c
//   (a = 1, c = -lr: velocity then learning rate; a = -lr, c = 1: the reverse)
// accel_jax_rms_f32, K = 5: decay, 1-decay, eps_root, eps, -lr
//   v = decay*v + (1-decay)*(g*g);  p = p + (g / (sqrt(v + eps_root) + eps)) * (-lr)
//
// Packed state (accel_jax.pack_state): the targets named `<kernel>_packed` (Adam float32
// and bfloat16, momentum, RMSProp) take each state slot as ONE buffer holding every
// leaf's values, and the leaves' offsets into it (an attribute, `offsets`: L int64s):
//   scalars, leaf_scalars, params[L], grads[L], slot_1, ..., slot_S
// with results params[L], slot_1, ..., slot_S (aliased to the inputs); leaf i's state
// is elements [offsets[i], offsets[i] + size_i) of each slot buffer, and the elements
// outside every leaf's range are left as they are.
//
// accel_jax_adam8_f32: Adam with 8-bit block-wise moments (transforms/quantized.py),
// S = 4 slots per leaf: m codes (u8[blocks, B]), m scales (f32[blocks]), codes and
// scales of r = sqrt(v); K = 10: Adam's nine, then the step count's int32 bits. One
// pass per block: decode, Adam's update (as above, v = r*r), then encode m and
// sqrt(v) with the same stochastic rounding as quantize() (one hash of the index
// and the count per value: m's threshold from its high 16 bits, sqrt(v)'s from its low).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Unit {
  int64_t leaf;
  int64_t begin;
  int64_t end;
};

// Splits every leaf into units of at most `chunk` elements.
std::vector<Unit> MakeUnits(const std::vector<int64_t>& sizes, int64_t chunk) {
  std::vector<Unit> units;
  for (int64_t leaf = 0; leaf < static_cast<int64_t>(sizes.size()); ++leaf) {
    for (int64_t b = 0; b < sizes[leaf]; b += chunk) {
      units.push_back({leaf, b, std::min(sizes[leaf], b + chunk)});
    }
  }
  return units;
}

// Runs body(unit) for every unit on the calling thread and up to
// pool.num_threads() - 1 helpers. Units are claimed from an atomic counter, so
// the caller never waits for a unit that nobody has started: no deadlock even
// when every pool thread is busy elsewhere.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, std::vector<Unit> units, int64_t total, Body body) {
  struct Shared {
    std::vector<Unit> units;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    Body body;
    Shared(std::vector<Unit> u, Body b) : units(std::move(u)), body(std::move(b)) {}
    void Drain() {
      const int64_t n = static_cast<int64_t>(units.size());
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        body(units[i]);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto shared = std::make_shared<Shared>(std::move(units), std::move(body));
  const int64_t n = static_cast<int64_t>(shared->units.size());
  // Below ~256K elements the scheduling costs more than a second thread saves.
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  helpers = std::min<int64_t>(helpers, total / (1 << 18));
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([shared] { shared->Drain(); });
  }
  shared->Drain();
  while (shared->done.load(std::memory_order_acquire) < n) {
    std::this_thread::yield();
  }
}

// One contiguous range of one leaf per call. An output may be its input itself
// (in-place update): every element is read before it is written.

void AdamLoop(int64_t n, const float* s, float wd, const float* p, const float* g,
              const float* m, const float* v, float* p_out, float* m_out, float* v_out) {
  const float b1 = s[0], c1 = s[1], b2 = s[2], c2 = s[3], bc1 = s[4], bc2 = s[5];
  const float eps_root = s[6], eps = s[7], neg_lr = s[8];
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    const float gk = g[k];
    const float pk = p[k];
    const float mk = b1 * m[k] + c1 * gk;
    const float vk = b2 * v[k] + c2 * (gk * gk);
    const float u = (mk / bc1) / (std::sqrt(vk / bc2 + eps_root) + eps) + wd * pk;
    p_out[k] = pk + u * neg_lr;
    m_out[k] = mk;
    v_out[k] = vk;
  }
}

template <bool kNesterov>
void MomentumLoop(int64_t n, const float* s, const float* p, const float* g, const float* t,
                  float* p_out, float* t_out) {
  const float beta = s[0], a = s[1], c = s[2];
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    const float h = g[k] * a;
    const float tk = beta * t[k] + h;
    const float u = kNesterov ? h + beta * tk : tk;
    p_out[k] = p[k] + u * c;
    t_out[k] = tk;
  }
}

void RmsLoop(int64_t n, const float* s, const float* p, const float* g, const float* v,
             float* p_out, float* v_out) {
  const float decay = s[0], c = s[1], eps_root = s[2], eps = s[3], neg_lr = s[4];
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    const float gk = g[k];
    const float vk = decay * v[k] + c * (gk * gk);
    p_out[k] = p[k] + (gk / (std::sqrt(vk + eps_root) + eps)) * neg_lr;
    v_out[k] = vk;
  }
}

// Pointers of one leaf: params, grads and S state slots of element type T (float, or
// the bits of a bfloat16), and the outputs of each.
template <int S, typename T>
struct Leaf {
  const float* p;
  const float* g;
  const T* slot[S];
  float* p_out;
  T* slot_out[S];
  float leaf_scalar;
};

// Decodes the operands (see the top of the file), checks them, and runs
// loop(leaf, begin, end) over every leaf in parallel. D: the slots' dtype; kPacked:
// the slots are one buffer each, leaf i's part at offsets[i].
template <int S, ffi::DataType D, typename T, bool kPacked, typename Loop>
ffi::Error Run(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars, size_t num_scalars,
               ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
               ffi::RemainingRets rets, ffi::Span<const int64_t> offsets, Loop loop) {
  const std::string who = "accel_jax kernel";
  if (scalars.element_count() != num_scalars) {
    return ffi::Error::InvalidArgument(who + ": wrong number of scalars");
  }
  const int64_t L = static_cast<int64_t>(leaf_scalars.element_count());
  const int64_t slot_operands = kPacked ? S : S * L;
  if (static_cast<int64_t>(args.size()) != 2 * L + slot_operands ||
      static_cast<int64_t>(rets.size()) != L + slot_operands) {
    return ffi::Error::InvalidArgument(who + ": operand count does not match the leaves");
  }
  const T* packed_in[S];
  T* packed_out[S];
  int64_t packed_size[S];
  if (kPacked) {
    if (static_cast<int64_t>(offsets.size()) != L) {
      return ffi::Error::InvalidArgument(who + ": one offset per leaf expected");
    }
    for (int j = 0; j < S; ++j) {
      auto in = args.get<ffi::Buffer<D>>(2 * L + j);
      auto out = rets.get<ffi::Buffer<D>>(L + j);
      if (!in.has_value() || !out.has_value()) {
        return ffi::Error::InvalidArgument(who + ": state dtypes do not match the kernel");
      }
      packed_size[j] = static_cast<int64_t>(in->element_count());
      if (static_cast<int64_t>((*out)->element_count()) != packed_size[j]) {
        return ffi::Error::InvalidArgument(who + ": result size differs from its operand");
      }
      packed_in[j] = reinterpret_cast<const T*>(in->untyped_data());
      packed_out[j] = reinterpret_cast<T*>((*out)->untyped_data());
    }
  }
  std::vector<Leaf<S, T>> leaves(L);
  std::vector<int64_t> sizes(L);
  int64_t total = 0;
  for (int64_t i = 0; i < L; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(L + i);
    auto p_out = rets.get<ffi::Buffer<ffi::F32>>(i);
    if (!p.has_value() || !g.has_value() || !p_out.has_value()) {
      return ffi::Error::InvalidArgument(who + ": params and gradients must be f32");
    }
    const int64_t n = static_cast<int64_t>(p->element_count());
    if (static_cast<int64_t>(g->element_count()) != n ||
        static_cast<int64_t>((*p_out)->element_count()) != n) {
      return ffi::Error::InvalidArgument(who + ": leaf sizes differ");
    }
    Leaf<S, T>& leaf = leaves[i];
    leaf.p = p->typed_data();
    leaf.g = g->typed_data();
    leaf.p_out = (*p_out)->typed_data();
    for (int j = 0; j < S; ++j) {
      if (kPacked) {
        const int64_t at = offsets[i];
        if (at < 0 || at > packed_size[j] - n) {
          return ffi::Error::InvalidArgument(who + ": a leaf lies outside its state buffer");
        }
        leaf.slot[j] = packed_in[j] + at;
        leaf.slot_out[j] = packed_out[j] + at;
        continue;
      }
      auto in = args.get<ffi::Buffer<D>>(2 * L + j * L + i);
      auto out = rets.get<ffi::Buffer<D>>(L + j * L + i);
      if (!in.has_value() || !out.has_value()) {
        return ffi::Error::InvalidArgument(who + ": state dtypes do not match the kernel");
      }
      if (static_cast<int64_t>(in->element_count()) != n ||
          static_cast<int64_t>((*out)->element_count()) != n) {
        return ffi::Error::InvalidArgument(who + ": leaf sizes differ");
      }
      leaf.slot[j] = reinterpret_cast<const T*>(in->untyped_data());
      leaf.slot_out[j] = reinterpret_cast<T*>((*out)->untyped_data());
    }
    leaf.leaf_scalar = leaf_scalars.typed_data()[i];
    sizes[i] = n;
    total += n;
  }
  ParallelFor(pool, MakeUnits(sizes, 1 << 16), total,
              [&leaves, &loop](const Unit& u) { loop(leaves[u.leaf], u.begin, u.end); });
  return ffi::Error::Success();
}

// The per-kernel part: slots and their dtype, scalar count, and how one range of one
// leaf is computed (operands in the order documented at the top).
// Adam with moments of type T (float, or bfloat16 bits) computed by `Loop`.
template <ffi::DataType D, typename T_, auto Loop>
struct AdamOp {
  static constexpr int kSlots = 2;
  static constexpr size_t kScalars = 9;
  static constexpr ffi::DataType kDtype = D;
  using T = T_;
  static void Apply(const float* s, const Leaf<2, T>& L, int64_t b, int64_t e) {
    Loop(e - b, s, L.leaf_scalar, L.p + b, L.g + b, L.slot[0] + b, L.slot[1] + b,
         L.p_out + b, L.slot_out[0] + b, L.slot_out[1] + b);
  }
};
using Adam = AdamOp<ffi::DataType::F32, float, AdamLoop>;

struct Momentum {
  static constexpr int kSlots = 1;
  static constexpr size_t kScalars = 4;
  static constexpr ffi::DataType kDtype = ffi::DataType::F32;
  using T = float;
  static void Apply(const float* s, const Leaf<1, T>& L, int64_t b, int64_t e) {
    auto loop = s[3] != 0.0f ? MomentumLoop<true> : MomentumLoop<false>;
    loop(e - b, s, L.p + b, L.g + b, L.slot[0] + b, L.p_out + b, L.slot_out[0] + b);
  }
};

struct Rms {
  static constexpr int kSlots = 1;
  static constexpr size_t kScalars = 5;
  static constexpr ffi::DataType kDtype = ffi::DataType::F32;
  using T = float;
  static void Apply(const float* s, const Leaf<1, T>& L, int64_t b, int64_t e) {
    RmsLoop(e - b, s, L.p + b, L.g + b, L.slot[0] + b, L.p_out + b, L.slot_out[0] + b);
  }
};


template <typename Op, bool kPacked>
ffi::Error Dispatch(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                    ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                    ffi::RemainingRets rets, ffi::Span<const int64_t> offsets) {
  using T = typename Op::T;
  const float* s = scalars.typed_data();
  return Run<Op::kSlots, Op::kDtype, T, kPacked>(
      pool, scalars, Op::kScalars, leaf_scalars, args, rets, offsets,
      [s](const Leaf<Op::kSlots, T>& L, int64_t b, int64_t e) { Op::Apply(s, L, b, e); });
}

template <typename Op>
ffi::Error Handler(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                   ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                   ffi::RemainingRets rets) {
  return Dispatch<Op, false>(pool, scalars, leaf_scalars, args, rets, {});
}

template <typename Op>
ffi::Error PackedHandler(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                         ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                         ffi::RemainingRets rets, ffi::Span<const int64_t> offsets) {
  return Dispatch<Op, true>(pool, scalars, leaf_scalars, args, rets, offsets);
}


// ------------------------------------------------------------ 8-bit block-wise Adam
// Codes: float8_e4m3fn bit patterns of value / block_max * 448 (see quantized.py).

// Branch-free: every select below is a bitwise blend of values already computed
// (a `c ? x : y` whose arms hold float operations stays a branch under GCC's
// default -ftrapping-math, and the loop would not vectorize).
inline uint32_t Bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float Float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
inline float Select(bool c, float x, float y) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return Float((Bits(x) & mask) | (Bits(y) & ~mask));
}

// The magnitude's float: codes 8-127 are normal floats (exponent and mantissa in place, the
// exponent re-biased by 120); codes 0-7 are read as the normal float 2^-6 * (1 + code / 8),
// less 2^-6 (exact): code * 2^-9.
inline float Magnitude(uint8_t code) {
  const uint32_t mag = code & 0x7Fu;
  const bool sub = mag < 8;
  return Float((mag + (120u << 3) + (static_cast<uint32_t>(sub) << 3)) << 20) -
         Select(sub, 0x1p-6f, 0.0f);
}

inline float Decode(uint8_t code, float unit) {  // unit = scale * (1 / 448)
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;  // exactly -x
  return Float(Bits(Magnitude(code)) ^ sign) * unit;
}

// murmur3's finaliser of the position and the salt term (count * 0x632BE5AB).
inline uint32_t Hash(uint32_t index, uint32_t salt_term) {
  uint32_t h = (index * 0x9E3779B9u) ^ salt_term;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// The stochastic rounding thresholds, in units of 2^-20 of a code step: m's from the
// hash's high 16 bits, sqrt(v)'s from its low 16, each 16 * k + 8 (k in [0, 2^16)).
inline int32_t ThresholdM(uint32_t h) { return static_cast<int32_t>(((h >> 12) & 0xFFFF0u) | 8u); }
inline int32_t ThresholdR(uint32_t h) { return static_cast<int32_t>(((h << 4) & 0xFFFF0u) | 8u); }

// a = min(|x * inv|, 448); below 2^-6 (the subnormal codes) a + 2^-6 is encoded instead, as
// a normal float, less 8 codes. The code is the float's exponent and top 3 mantissa bits,
// the fraction of a code step its 20 other mantissa bits; round up when t < fraction.
// kSigned = false: x is +0, positive or NaN (sqrt(v)), and the code's sign bit 0 as well.
template <bool kSigned>
inline uint8_t Encode(float x, float inv, int32_t t) {
  const float y = x * inv;
  const float ay = kSigned ? std::fabs(y) : y;
  const float a = Select(448.0f < ay, 448.0f, ay);  // NaN stays NaN, as jnp.minimum
  const bool normal = a >= 0x1p-6f;
  const uint32_t bits = Bits(Select(normal, a, a + 0x1p-6f));
  int32_t code = static_cast<int32_t>(bits >> 20) - ((120 << 3) + 8) +
                 (static_cast<int32_t>(normal) << 3);
  code += static_cast<int32_t>(t < static_cast<int32_t>(bits & 0xFFFFFu));
  code = std::min(code, 0x7E);  // a NaN value: 0x7E (its block's scale is NaN)
  if (!kSigned) return static_cast<uint8_t>(code);
  return static_cast<uint8_t>(code | (static_cast<int32_t>(y < 0.0f) << 7));
}

struct Adam8Leaf {
  const float* p;
  const float* g;
  const uint8_t* mc;
  const float* ms;
  const uint8_t* rc;
  const float* rs;
  float* p_out;
  uint8_t* mc_out;
  float* ms_out;
  uint8_t* rc_out;
  float* rs_out;
  int64_t n;      // values
  int64_t block;  // values per block
  float wd;
};

// Blocks [b0, b1) of one leaf; m and r (= sqrt(v)) are staged in `buf` (2 * block floats),
// the hashes in `hash` (block values). Separate loops for the hashes and each moment's codes
// are faster than one (fewer live vectors: the byte loops run 64 values per iteration).
template <bool kNoEpsRoot>
void Adam8Blocks(const float* s, const Adam8Leaf& L, int64_t b0, int64_t b1, float* buf,
                 uint32_t* hash) {
  const float b1c = s[0], c1 = s[1], b2 = s[2], c2 = s[3];
  const float inv_bc1 = 1.0f / s[4], inv_bc2 = 1.0f / s[5], inv_sqrt_bc2 = 1.0f / std::sqrt(s[5]);
  const float eps_root = s[6], eps = s[7], neg_lr = s[8];
  uint32_t count;
  std::memcpy(&count, &s[9], 4);
  const uint32_t salt = count * 0x632BE5ABu;
  const int64_t B = L.block;
  float* m = buf;
  float* r = buf + B;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * B;
    const int64_t n = std::min<int64_t>(B, L.n - start);
    // XLA rewrites the division by the constant 448 as a multiplication (to the bit).
    const float mu = L.ms[b] * (1.0f / 448.0f), ru = L.rs[b] * (1.0f / 448.0f);
    const uint8_t* mc = L.mc + start;
    const uint8_t* rc = L.rc + start;
    const float* p = L.p + start;
    const float* g = L.g + start;
    float* p_out = L.p_out + start;
    // max |m| and max sqrt(v) as bits: non-negative floats order as their bits, and a
    // NaN (above infinity) wins, as jnp.max propagates it.
    uint32_t mmax_bits = 0, rmax_bits = 0;
#pragma GCC ivdep
    for (int64_t k = 0; k < n; ++k) {
      const float gk = g[k], pk = p[k];
      const float r_old = Magnitude(rc[k]) * ru;  // squared below: its sign is irrelevant
      const float mk = b1c * Decode(mc[k], mu) + c1 * gk;
      const float vk = b2 * (r_old * r_old) + c2 * (gk * gk);
      const float rk = std::sqrt(vk);
      // The codes depend on mk and rk only; the update may round differently from XLA's
      // (float32 rounding, as every kernel): reciprocals instead of two divisions, and
      // without eps_root sqrt(v / bc2) = sqrt(v) / sqrt(bc2), one square root per value.
      const float denom = kNoEpsRoot ? rk * inv_sqrt_bc2 : std::sqrt(vk * inv_bc2 + eps_root);
      const float u = (mk * inv_bc1) / (denom + eps) + L.wd * pk;
      p_out[k] = pk + u * neg_lr;
      m[k] = mk;
      r[k] = rk;
      mmax_bits = std::max(mmax_bits, Bits(mk) & 0x7FFFFFFFu);
      rmax_bits = std::max(rmax_bits, Bits(rk) & 0x7FFFFFFFu);
    }
    for (int64_t k = n; k < B; ++k) m[k] = r[k] = 0.0f;  // padding, as quantize() pads
    const float mmax = Float(mmax_bits), rmax = Float(rmax_bits);
    const float minv = mmax > 0.0f ? 448.0f / mmax : 0.0f;
    const float rinv = rmax > 0.0f ? 448.0f / rmax : 0.0f;
    const uint32_t index0 = static_cast<uint32_t>(start);
    for (int64_t k = 0; k < B; ++k) hash[k] = Hash(index0 + static_cast<uint32_t>(k), salt);
    uint8_t* mc_out = L.mc_out + start;
    uint8_t* rc_out = L.rc_out + start;
#pragma GCC ivdep
    for (int64_t k = 0; k < B; ++k) mc_out[k] = Encode<true>(m[k], minv, ThresholdM(hash[k]));
#pragma GCC ivdep
    for (int64_t k = 0; k < B; ++k) rc_out[k] = Encode<false>(r[k], rinv, ThresholdR(hash[k]));
    L.ms_out[b] = mmax;
    L.rs_out[b] = rmax;
  }
}

ffi::Error Adam8Handler(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                        ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                        ffi::RemainingRets rets) {
  const std::string who = "accel_jax_adam8_f32";
  if (scalars.element_count() != 10) {
    return ffi::Error::InvalidArgument(who + ": wrong number of scalars");
  }
  const int64_t L = static_cast<int64_t>(leaf_scalars.element_count());
  if (static_cast<int64_t>(args.size()) != 6 * L || static_cast<int64_t>(rets.size()) != 5 * L) {
    return ffi::Error::InvalidArgument(who + ": operand count does not match the leaves");
  }
  std::vector<Adam8Leaf> leaves(L);
  std::vector<int64_t> blocks(L);
  int64_t total = 0, max_block = 1;
  for (int64_t i = 0; i < L; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(L + i);
    auto mc = args.get<ffi::Buffer<ffi::U8>>(2 * L + i);
    auto ms = args.get<ffi::Buffer<ffi::F32>>(3 * L + i);
    auto rc = args.get<ffi::Buffer<ffi::U8>>(4 * L + i);
    auto rs = args.get<ffi::Buffer<ffi::F32>>(5 * L + i);
    auto po = rets.get<ffi::Buffer<ffi::F32>>(i);
    auto mco = rets.get<ffi::Buffer<ffi::U8>>(L + i);
    auto mso = rets.get<ffi::Buffer<ffi::F32>>(2 * L + i);
    auto rco = rets.get<ffi::Buffer<ffi::U8>>(3 * L + i);
    auto rso = rets.get<ffi::Buffer<ffi::F32>>(4 * L + i);
    if (!p || !g || !mc || !ms || !rc || !rs || !po || !mco || !mso || !rco || !rso) {
      return ffi::Error::InvalidArgument(who + ": operand dtypes do not match the kernel");
    }
    const int64_t n = static_cast<int64_t>(p->element_count());
    const int64_t nb = static_cast<int64_t>(ms->element_count());
    const int64_t codes = static_cast<int64_t>(mc->element_count());
    if (nb <= 0 || codes % nb != 0 || g->element_count() != p->element_count() ||
        rs->element_count() != ms->element_count() || rc->element_count() != mc->element_count() ||
        (*po)->element_count() != p->element_count() ||
        (*mco)->element_count() != mc->element_count() ||
        (*rco)->element_count() != rc->element_count() ||
        (*mso)->element_count() != ms->element_count() ||
        (*rso)->element_count() != rs->element_count()) {
      return ffi::Error::InvalidArgument(who + ": operand sizes do not match");
    }
    const int64_t B = codes / nb;
    if (n > nb * B || n <= (nb - 1) * B) {
      return ffi::Error::InvalidArgument(who + ": blocks do not cover the leaf");
    }
    leaves[i] = {p->typed_data(),     g->typed_data(),     mc->typed_data(),
                 ms->typed_data(),    rc->typed_data(),    rs->typed_data(),
                 (*po)->typed_data(), (*mco)->typed_data(), (*mso)->typed_data(),
                 (*rco)->typed_data(), (*rso)->typed_data(), n, B,
                 leaf_scalars.typed_data()[i]};
    blocks[i] = nb;
    total += n;
    max_block = std::max(max_block, B);
  }
  // Units of whole blocks, about 64K values each.
  std::vector<Unit> units;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t per = std::max<int64_t>(1, (1 << 16) / leaves[i].block);
    for (int64_t b = 0; b < blocks[i]; b += per) {
      units.push_back({i, b, std::min(blocks[i], b + per)});
    }
  }
  const float* s = scalars.typed_data();
  ParallelFor(pool, std::move(units), total, [s, &leaves, max_block](const Unit& u) {
    thread_local std::vector<float> buf;
    thread_local std::vector<uint32_t> hash;
    if (static_cast<int64_t>(buf.size()) < 2 * max_block) buf.resize(2 * max_block);
    if (static_cast<int64_t>(hash.size()) < max_block) hash.resize(max_block);
    if (s[6] == 0.0f) {
      Adam8Blocks<true>(s, leaves[u.leaf], u.begin, u.end, buf.data(), hash.data());
    } else {
      Adam8Blocks<false>(s, leaves[u.leaf], u.begin, u.end, buf.data(), hash.data());
    }
  });
  return ffi::Error::Success();
}


// ------------------------------------------------------------ Adam, bfloat16 moments
// accel_jax_adam_bf16: as accel_jax_adam_f32 with m and v stored as bfloat16 (S = 2,
// K = 9): computed in float32 from the stored values, rounded to nearest even as XLA
// converts, and the update computed from the rounded (stored) moments, as
// scale_by_adam(mu_dtype=bfloat16, nu_dtype=bfloat16) does.

inline float FromBf16(uint16_t h) { return Float(static_cast<uint32_t>(h) << 16); }

inline uint16_t ToBf16(float x) {
  const uint32_t b = Bits(x);
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (b >> 16) | 0x40u;
  const uint32_t is_nan = static_cast<uint32_t>((b & 0x7FFFFFFFu) > 0x7F800000u);
  const uint32_t mask = 0u - is_nan;
  return static_cast<uint16_t>((quiet_nan & mask) | (rounded & ~mask));
}

void AdamBf16Loop(int64_t n, const float* s, float wd, const float* p, const float* g,
                  const uint16_t* m, const uint16_t* v, float* p_out, uint16_t* m_out,
                  uint16_t* v_out) {
  const float b1 = s[0], c1 = s[1], b2 = s[2], c2 = s[3], bc1 = s[4], bc2 = s[5];
  const float eps_root = s[6], eps = s[7], neg_lr = s[8];
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    const float gk = g[k];
    const float pk = p[k];
    const uint16_t mq = ToBf16(b1 * FromBf16(m[k]) + c1 * gk);
    const uint16_t vq = ToBf16(b2 * FromBf16(v[k]) + c2 * (gk * gk));
    const float u =
        (FromBf16(mq) / bc1) / (std::sqrt(FromBf16(vq) / bc2 + eps_root) + eps) + wd * pk;
    p_out[k] = pk + u * neg_lr;
    m_out[k] = mq;
    v_out[k] = vq;
  }
}

using AdamBf16 = AdamOp<ffi::DataType::BF16, uint16_t, AdamBf16Loop>;

}  // namespace

#define ACCEL_JAX_BIND                                   \
  ffi::Ffi::Bind()                                       \
      .Ctx<ffi::ThreadPool>()                            \
      .Arg<ffi::Buffer<ffi::F32>>()                      \
      .Arg<ffi::Buffer<ffi::F32>>()                      \
      .RemainingArgs()                                   \
      .RemainingRets()

#define ACCEL_JAX_BIND_PACKED ACCEL_JAX_BIND.Attr<ffi::Span<const int64_t>>("offsets")

XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam_f32, Handler<Adam>, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_momentum_f32, Handler<Momentum>, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_rms_f32, Handler<Rms>, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam_bf16, Handler<AdamBf16>, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam8_f32, Adam8Handler, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam_f32_packed, PackedHandler<Adam>,
                              ACCEL_JAX_BIND_PACKED);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_momentum_f32_packed, PackedHandler<Momentum>,
                              ACCEL_JAX_BIND_PACKED);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_rms_f32_packed, PackedHandler<Rms>,
                              ACCEL_JAX_BIND_PACKED);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam_bf16_packed, PackedHandler<AdamBf16>,
                              ACCEL_JAX_BIND_PACKED);
