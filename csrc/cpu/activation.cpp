// CPU kernels for Dice with batch statistics (DIN's activation, training mode), forward and backward.
//
// Dice is BatchNorm feeding a gate: y = x (alpha + (1 - alpha) sigmoid(w (x - mean) r + b)),
// r = 1 / sqrt(var + eps), mean and var per column over the valid rows, (w, b) BatchNorm's affine
// (ones and zeros for DIN's Dice without one). Composed from PyTorch ops a
// forward and backward make ~30 passes over the [N, H] activations; here the forward is two (the
// statistics, then the gate) and the backward two (the three column sums, then the gradient).
// Rows are split in one contiguous chunk per thread whose partial sums (in double) are added in
// chunk order: the results do not depend on scheduling.
#include "cpu/activation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/fast_math.h"
#include "cpu/parallel.h"

namespace rankops::cpu {
namespace {

constexpr int64_t kMinRows = 256;  // rows per chunk at least: the partial sums are H doubles each
constexpr int64_t kFlush = 32;     // rows summed in fp32 (vectorised) before they are added in double

void check(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& alpha, const at::Tensor& weight,
           const at::Tensor& bias) {
  TORCH_CHECK_VALUE(x.dim() == 2, "dice: x must be [rows, columns], got ", x.sizes());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.size(0) == x.size(0) && mask.scalar_type() == at::kBool,
                    "dice: mask must be a bool [rows] tensor");
  for (const auto* t : {&alpha, &weight, &bias})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(1), "dice: alpha, weight and bias must be [columns]");
}

// the per-column parameters in fp32: alpha, weight, bias
struct Params {
  at::Tensor a, w, b;
  Params(const at::Tensor& alpha, const at::Tensor& weight, const at::Tensor& bias)
      : a(alpha.to(at::kFloat).contiguous()), w(weight.to(at::kFloat).contiguous()),
        b(bias.to(at::kFloat).contiguous()) {}
  const float* ap() const { return a.data_ptr<float>(); }
  const float* wp() const { return w.data_ptr<float>(); }
  const float* bp() const { return b.data_ptr<float>(); }
};

// Column sums over row chunks, added in chunk order. Per chunk, row_terms(r, acc) adds row r's
// `width` terms into the fp32 block sums acc, which are added into the chunk's doubles every kFlush
// rows: fp32 inner loops that vectorise, double where the sums grow long.
template <typename F>
std::vector<double> column_sums(int64_t rows, int64_t width, const F& row_terms) {
  const int64_t chunks = num_chunks(rows, kMinRows);
  std::vector<double> part(chunks * width, 0.0);
  for_chunks(rows, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    double* total = part.data() + c * width;
    std::vector<float> block(width);
    for (int64_t b0 = r0; b0 < r1; b0 += kFlush) {
      std::fill(block.begin(), block.end(), 0.f);
      for (int64_t r = b0; r < std::min(r1, b0 + kFlush); ++r) row_terms(r, block.data());
      for (int64_t j = 0; j < width; ++j) total[j] += block[j];
    }
  });
  std::vector<double> sum(width, 0.0);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < width; ++j) sum[j] += part[c * width + j];
  return sum;
}

// one row's statistics terms about a shift (a valid row's values: the shifted-data variance does not
// cancel catastrophically when |mean| >> std): s[j] += x[j] - k[j], s[H + j] += (x[j] - k[j])^2
inline void moment_terms(const float* __restrict x, const float* __restrict k, float* __restrict s, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float c = x[j] - k[j];
    s[j] += c;
    s[H + j] += c * c;
  }
}

// wr = w r per column: the gate's argument is (x - mean) wr + b (x - mean first: no cancellation
// when |mean| >> std)
inline void gate_row(const float* __restrict x, const float* __restrict mean, const float* __restrict wr,
                     const float* __restrict b, const float* __restrict alpha, float* __restrict y, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float p = sigmoid_f((x[j] - mean[j]) * wr[j] + b[j]);
    y[j] = x[j] * (alpha[j] + (1.f - alpha[j]) * p);
  }
}

// one row's backward sums (gu = dL/d(gate argument)): s[j] += gu, s[H + j] += gu z, s[2H + j] += g x (1 - p)
inline void backward_terms(const float* __restrict x, const float* __restrict g, const float* __restrict mean,
                           const float* __restrict rstd, const float* __restrict w, const float* __restrict b,
                           const float* __restrict alpha, float* __restrict s, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float z = (x[j] - mean[j]) * rstd[j];
    const float p = sigmoid_f(z * w[j] + b[j]);
    const float gx = g[j] * x[j];
    const float gu = gx * (1.f - alpha[j]) * p * (1.f - p);
    s[j] += gu;
    s[H + j] += gu * z;
    s[2 * H + j] += gx * (1.f - p);
  }
}

// wr = w r per column
inline void backward_row(const float* __restrict x, const float* __restrict g, const float* __restrict mean,
                         const float* __restrict rstd, const float* __restrict w, const float* __restrict b,
                         const float* __restrict wr, const float* __restrict alpha, const float* __restrict c1,
                         const float* __restrict cz, float valid, float* __restrict out, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float z = (x[j] - mean[j]) * rstd[j];
    const float p = sigmoid_f(z * w[j] + b[j]);
    const float gu = g[j] * x[j] * (1.f - alpha[j]) * p * (1.f - p);
    out[j] = g[j] * (alpha[j] + (1.f - alpha[j]) * p) + wr[j] * gu - valid * (c1[j] + z * cz[j]);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> dice(const at::Tensor& x_, const at::Tensor& mask_,
                                                    const at::Tensor& alpha_, const at::Tensor& weight_,
                                                    const at::Tensor& bias_, double eps) {
  check(x_, mask_, alpha_, weight_, bias_);
  const auto x = x_.to(at::kFloat).contiguous();
  const auto mask = mask_.contiguous();
  const Params prm(alpha_, weight_, bias_);
  const int64_t N = x.size(0), H = x.size(1);
  const float* xp = x.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();

  int64_t count = 0, first = -1;
  for (int64_t r = 0; r < N; ++r) {
    if (mp[r] && first < 0) first = r;
    count += mp[r];
  }
  const std::vector<float> shift = first < 0 ? std::vector<float>(H, 0.f)
                                             : std::vector<float>(xp + first * H, xp + (first + 1) * H);
  // [sum (x - shift) | sum (x - shift)^2] over the valid rows
  const auto sums = column_sums(N, 2 * H, [&](int64_t r, float* acc) {
    if (mp[r]) moment_terms(xp + r * H, shift.data(), acc, H);
  });
  const double n = std::max<double>(count, 1.0);
  auto mean = at::empty({H}, x.options());
  auto var = at::empty({H}, x.options());
  std::vector<float> wr(H);
  for (int64_t j = 0; j < H; ++j) {
    const double d = sums[j] / n;  // mean - shift
    const double m = shift[j] + d;
    const double v = std::max(sums[H + j] / n - d * d, 0.0);
    mean.data_ptr<float>()[j] = static_cast<float>(m);
    var.data_ptr<float>()[j] = static_cast<float>(v);
    wr[j] = static_cast<float>(prm.wp()[j] / std::sqrt(v + eps));
  }
  const float* meanp = mean.data_ptr<float>();
  auto y = empty_large({N, H}, x.options());  // huge pages, reused: a fresh [N, H] faults in 4 KiB at a time
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, kMinRows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) gate_row(xp + r * H, meanp, wr.data(), prm.bp(), prm.ap(), yp + r * H, H);
  });
  return {y.to(x_.scalar_type()), mean, var};
}

// gx_i = gy_i (alpha + (1 - alpha) p_i) + w r gu_i - [i valid] w r / n (S1 + z_i Sz),
// gu_i = gy_i x_i (1 - alpha) p_i (1 - p_i), S1 = sum_i gu_i, Sz = sum_i gu_i z_i (every row: a
// padded row's output depends on the statistics too), galpha = sum_i gy_i x_i (1 - p_i),
// gw = Sz, gb = S1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dice_backward(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& mask_, const at::Tensor& alpha_,
    const at::Tensor& weight_, const at::Tensor& bias_, const at::Tensor& mean_, const at::Tensor& var_, double eps) {
  check(x_, mask_, alpha_, weight_, bias_);
  TORCH_CHECK_VALUE(grad_.sizes() == x_.sizes(), "dice_backward: grad must be shaped as x");
  const auto x = x_.to(at::kFloat).contiguous();
  const auto g = grad_.to(at::kFloat).contiguous();
  const auto mask = mask_.contiguous();
  const Params prm(alpha_, weight_, bias_);
  const auto mean = mean_.to(at::kFloat).contiguous();
  const auto var = var_.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), H = x.size(1);
  const float *xp = x.data_ptr<float>(), *gp = g.data_ptr<float>();
  const float* meanp = mean.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();
  std::vector<float> rstd(H), wr(H);
  const float* varp = var.data_ptr<float>();
  for (int64_t j = 0; j < H; ++j) {
    rstd[j] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(varp[j]) + eps));
    wr[j] = prm.wp()[j] * rstd[j];
  }

  // [S1 | Sz | galpha]
  const auto sums = column_sums(N, 3 * H, [&](int64_t r, float* acc) {
    backward_terms(xp + r * H, gp + r * H, meanp, rstd.data(), prm.wp(), prm.bp(), prm.ap(), acc, H);
  });
  int64_t count = 0;
  for (int64_t r = 0; r < N; ++r) count += mp[r];
  const double n = std::max<double>(count, 1.0);
  std::vector<float> c1(H), cz(H);  // w r S1 / n and w r Sz / n
  for (int64_t j = 0; j < H; ++j) {
    c1[j] = static_cast<float>(wr[j] * sums[j] / n);
    cz[j] = static_cast<float>(wr[j] * sums[H + j] / n);
  }
  auto gx = empty_large({N, H}, x.options());
  float* gxp = gx.data_ptr<float>();
  at::parallel_for(0, N, kMinRows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      backward_row(xp + r * H, gp + r * H, meanp, rstd.data(), prm.wp(), prm.bp(), wr.data(), prm.ap(), c1.data(),
                   cz.data(), mp[r] ? 1.f : 0.f, gxp + r * H, H);
  });
  auto galpha = at::empty({H}, x.options()), gw = at::empty({H}, x.options()), gb = at::empty({H}, x.options());
  for (int64_t j = 0; j < H; ++j) {
    galpha.data_ptr<float>()[j] = static_cast<float>(sums[2 * H + j]);
    gw.data_ptr<float>()[j] = static_cast<float>(sums[H + j]);
    gb.data_ptr<float>()[j] = static_cast<float>(sums[j]);
  }
  return {gx.to(x_.scalar_type()), galpha.to(alpha_.scalar_type()), gw.to(weight_.scalar_type()),
          gb.to(bias_.scalar_type())};
}

}  // namespace rankops::cpu
