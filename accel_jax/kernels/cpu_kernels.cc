// Fused single-pass optimizer kernels for XLA:CPU, called through jax.ffi.
//
// XLA:CPU writes each output array of an elementwise computation in its own
// loop, so an Adam step (new params, new first and second moments) is three
// passes over memory and the params pass reads back the moments the first two
// wrote. These kernels compute every output of one element in one loop
// iteration: each input and output is touched once.
//
// Operands of accel_jax_adam_f32 (L leaves, all float32, any shapes):
//   scalars  f32[8]: b1, 1-b1, b2, 1-b2, bc1, bc2, eps_root, eps_eff
//   lr_wd    f32[1 + L]: -learning_rate, then each leaf's weight decay (0: none)
//   params[L], grads[L], mu[L], nu[L]
// Results: params[L], mu[L], nu[L] (aliased to the inputs by the caller).
// Per element, in the order of accel_jax's transformations (so that the values
// are the same as the XLA path's):
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g)
//   u = (m/bc1) / (sqrt(v/bc2 + eps_root) + eps_eff) + wd*p
//   p = p + u*(-lr)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
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

// One contiguous range of one leaf. Outputs may be the inputs themselves
// (in-place update): every element is read before it is written.
void AdamLoop(int64_t n, const float* p, const float* g, const float* m, const float* v,
              float* p_out, float* m_out, float* v_out, float b1, float one_minus_b1, float b2,
              float one_minus_b2, float bc1, float bc2, float eps_root, float eps_eff, float wd,
              float neg_lr) {
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    const float gk = g[k];
    const float pk = p[k];
    const float mk = b1 * m[k] + one_minus_b1 * gk;
    const float vk = b2 * v[k] + one_minus_b2 * (gk * gk);
    const float u = (mk / bc1) / (std::sqrt(vk / bc2 + eps_root) + eps_eff) + wd * pk;
    p_out[k] = pk + u * neg_lr;
    m_out[k] = mk;
    v_out[k] = vk;
  }
}

ffi::Error AdamF32(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                   ffi::Buffer<ffi::F32> lr_wd, ffi::RemainingArgs args,
                   ffi::RemainingRets rets) {
  if (scalars.element_count() != 8) {
    return ffi::Error::InvalidArgument("accel_jax_adam_f32: scalars must have 8 values");
  }
  const int64_t num_leaves = static_cast<int64_t>(lr_wd.element_count()) - 1;
  if (num_leaves < 0 || static_cast<int64_t>(args.size()) != 4 * num_leaves ||
      static_cast<int64_t>(rets.size()) != 3 * num_leaves) {
    return ffi::Error::InvalidArgument("accel_jax_adam_f32: expected 4L operands, 3L results");
  }
  struct Leaf {
    const float* p;
    const float* g;
    const float* m;
    const float* v;
    float* p_out;
    float* m_out;
    float* v_out;
    float wd;
  };
  std::vector<Leaf> leaves(num_leaves);
  std::vector<int64_t> sizes(num_leaves);
  const float* hp = lr_wd.typed_data();
  int64_t total = 0;
  for (int64_t i = 0; i < num_leaves; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(num_leaves + i);
    auto m = args.get<ffi::Buffer<ffi::F32>>(2 * num_leaves + i);
    auto v = args.get<ffi::Buffer<ffi::F32>>(3 * num_leaves + i);
    auto po = rets.get<ffi::Buffer<ffi::F32>>(i);
    auto mo = rets.get<ffi::Buffer<ffi::F32>>(num_leaves + i);
    auto vo = rets.get<ffi::Buffer<ffi::F32>>(2 * num_leaves + i);
    if (!p.has_value() || !g.has_value() || !m.has_value() || !v.has_value() ||
        !po.has_value() || !mo.has_value() || !vo.has_value()) {
      return ffi::Error::InvalidArgument("accel_jax_adam_f32: every buffer must be float32");
    }
    const int64_t n = static_cast<int64_t>(p->element_count());
    if (static_cast<int64_t>(g->element_count()) != n ||
        static_cast<int64_t>(m->element_count()) != n ||
        static_cast<int64_t>(v->element_count()) != n) {
      return ffi::Error::InvalidArgument("accel_jax_adam_f32: leaf sizes differ");
    }
    leaves[i] = {p->typed_data(),       g->typed_data(),       m->typed_data(),
                 v->typed_data(),       (*po)->typed_data(),   (*mo)->typed_data(),
                 (*vo)->typed_data(),   hp[1 + i]};
    sizes[i] = n;
    total += n;
  }
  const float* s = scalars.typed_data();
  const float b1 = s[0], one_minus_b1 = s[1], b2 = s[2], one_minus_b2 = s[3];
  const float bc1 = s[4], bc2 = s[5], eps_root = s[6], eps_eff = s[7];
  const float neg_lr = hp[0];

  auto body = [&leaves, b1, one_minus_b1, b2, one_minus_b2, bc1, bc2, eps_root, eps_eff,
               neg_lr](const Unit& unit) {
    const Leaf& L = leaves[unit.leaf];
    const int64_t b = unit.begin;
    AdamLoop(unit.end - b, L.p + b, L.g + b, L.m + b, L.v + b, L.p_out + b, L.m_out + b,
             L.v_out + b, b1, one_minus_b1, b2, one_minus_b2, bc1, bc2, eps_root, eps_eff,
             L.wd, neg_lr);
  };
  ParallelFor(pool, MakeUnits(sizes, 1 << 16), total, body);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(accel_jax_adam_f32, AdamF32,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());
