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
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
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

// Pointers of one leaf: inputs params, grads, S slots; outputs params, S slots.
template <int S>
struct Leaf {
  const float* in[2 + S];
  float* out[1 + S];
  float leaf_scalar;
};

// Decodes the operands (see the top of the file), checks them, and runs
// loop(leaf, begin, end) over every leaf in parallel.
template <int S, typename Loop>
ffi::Error Run(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars, size_t num_scalars,
               ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
               ffi::RemainingRets rets, Loop loop) {
  const std::string who = "accel_jax kernel";
  if (scalars.element_count() != num_scalars) {
    return ffi::Error::InvalidArgument(who + ": wrong number of scalars");
  }
  const int64_t num_leaves = static_cast<int64_t>(leaf_scalars.element_count());
  if (static_cast<int64_t>(args.size()) != (2 + S) * num_leaves ||
      static_cast<int64_t>(rets.size()) != (1 + S) * num_leaves) {
    return ffi::Error::InvalidArgument(who + ": operand count does not match the leaves");
  }
  std::vector<Leaf<S>> leaves(num_leaves);
  std::vector<int64_t> sizes(num_leaves);
  int64_t total = 0;
  for (int64_t i = 0; i < num_leaves; ++i) {
    int64_t n = -1;
    for (int j = 0; j < 2 + S; ++j) {
      auto buf = args.get<ffi::Buffer<ffi::F32>>(j * num_leaves + i);
      if (!buf.has_value()) return ffi::Error::InvalidArgument(who + ": operands must be f32");
      const int64_t size = static_cast<int64_t>(buf->element_count());
      if (n >= 0 && size != n) return ffi::Error::InvalidArgument(who + ": leaf sizes differ");
      n = size;
      leaves[i].in[j] = buf->typed_data();
    }
    for (int j = 0; j < 1 + S; ++j) {
      auto buf = rets.get<ffi::Buffer<ffi::F32>>(j * num_leaves + i);
      if (!buf.has_value()) return ffi::Error::InvalidArgument(who + ": results must be f32");
      if (static_cast<int64_t>((*buf)->element_count()) != n) {
        return ffi::Error::InvalidArgument(who + ": result size differs from its operand");
      }
      leaves[i].out[j] = (*buf)->typed_data();
    }
    leaves[i].leaf_scalar = leaf_scalars.typed_data()[i];
    sizes[i] = n;
    total += n;
  }
  ParallelFor(pool, MakeUnits(sizes, 1 << 16), total,
              [&leaves, &loop](const Unit& u) { loop(leaves[u.leaf], u.begin, u.end); });
  return ffi::Error::Success();
}

// The per-kernel part: slots, scalar count, and how one range of one leaf is
// computed (operands in the order documented at the top).
struct Adam {
  static constexpr int kSlots = 2;
  static constexpr size_t kScalars = 9;
  static void Apply(const float* s, const Leaf<2>& L, int64_t b, int64_t e) {
    AdamLoop(e - b, s, L.leaf_scalar, L.in[0] + b, L.in[1] + b, L.in[2] + b, L.in[3] + b,
             L.out[0] + b, L.out[1] + b, L.out[2] + b);
  }
};

struct Momentum {
  static constexpr int kSlots = 1;
  static constexpr size_t kScalars = 4;
  static void Apply(const float* s, const Leaf<1>& L, int64_t b, int64_t e) {
    auto loop = s[3] != 0.0f ? MomentumLoop<true> : MomentumLoop<false>;
    loop(e - b, s, L.in[0] + b, L.in[1] + b, L.in[2] + b, L.out[0] + b, L.out[1] + b);
  }
};

struct Rms {
  static constexpr int kSlots = 1;
  static constexpr size_t kScalars = 5;
  static void Apply(const float* s, const Leaf<1>& L, int64_t b, int64_t e) {
    RmsLoop(e - b, s, L.in[0] + b, L.in[1] + b, L.in[2] + b, L.out[0] + b, L.out[1] + b);
  }
};

template <typename Op>
ffi::Error Handler(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                   ffi::Buffer<ffi::F32> leaf_scalars, ffi::RemainingArgs args,
                   ffi::RemainingRets rets) {
  const float* s = scalars.typed_data();
  return Run<Op::kSlots>(pool, scalars, Op::kScalars, leaf_scalars, args, rets,
                         [s](const Leaf<Op::kSlots>& L, int64_t b, int64_t e) {
                           Op::Apply(s, L, b, e);
                         });
}

}  // namespace

#define ACCEL_JAX_BIND                                   \
  ffi::Ffi::Bind()                                       \
      .Ctx<ffi::ThreadPool>()                            \
      .Arg<ffi::Buffer<ffi::F32>>()                      \
      .Arg<ffi::Buffer<ffi::F32>>()                      \
      .RemainingArgs()                                   \
      .RemainingRets()

XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam_f32, Handler<Adam>, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_momentum_f32, Handler<Momentum>, ACCEL_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_rms_f32, Handler<Rms>, ACCEL_JAX_BIND);
