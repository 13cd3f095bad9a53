// C++-level checks of the library built by CMake: the ops are registered, agree with a
// dense convolution of the gathered weight, differentiate, and reject bad segments.
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "segments.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

at::Tensor sliced_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         std::vector<int64_t> in, std::vector<int64_t> out) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dvn_kernels::sliced_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef)>();
  return op.call(x, w, b, in, out, {1, 1}, {1, 1}, {1, 1});
}

}  // namespace

int main() {
  torch::manual_seed(0);
  auto w = torch::randn({11, 13, 3, 3}, torch::dtype(torch::kDouble).requires_grad(true));
  auto b = torch::randn({11}, torch::dtype(torch::kDouble).requires_grad(true));
  auto x = torch::randn({2, 7, 9, 9}, torch::dtype(torch::kDouble).requires_grad(true));
  const std::vector<int64_t> in = {1, 3, 9, 4}, out = {2, 2, 6, 5};

  auto y = sliced_conv2d(x, w, b, in, out);
  auto idx = [](std::vector<int64_t> v) {
    return torch::cat({torch::arange(v[0], v[0] + v[1]), torch::arange(v[2], v[2] + v[3])});
  };
  auto w_active = w.index_select(0, idx(out)).index_select(1, idx(in));
  auto expected = torch::conv2d(x, w_active, b.index_select(0, idx(out)), 1, 1);
  expect(torch::allclose(y, expected), "forward equals conv2d of the gathered weight");

  auto g = torch::randn_like(y);
  auto grads = torch::autograd::grad({y}, {x, w, b}, {g});
  auto want = torch::autograd::grad({expected}, {x, w, b}, {g});
  for (size_t i = 0; i < grads.size(); ++i) {
    expect(torch::allclose(grads[i], want[i]), "gradient " + std::to_string(i));
  }

  bool threw = false;
  try {
    sliced_conv2d(x, w, b, {9, 4, 1, 3}, out);
  } catch (const c10::ValueError& e) {
    threw = std::string(e.what()).find("in_segments") != std::string::npos;
  }
  expect(threw, "unsorted segments raise a ValueError naming in_segments");

  const auto gaps = dvn::complement(dvn::parse_segments(std::vector<int64_t>{1, 3, 9, 4}, 13, "s"), 13);
  expect(gaps.size() == 2 && gaps[0].start == 0 && gaps[1].start == 4 && gaps[1].length == 5,
         "complement of segments");

  if (failures == 0) std::cout << "dvn_kernels C++ tests passed\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
