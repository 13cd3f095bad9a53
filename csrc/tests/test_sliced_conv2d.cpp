// C++-level checks of the library built by CMake: the ops are registered, agree with a
// dense convolution of the gathered weight, differentiate, and reject bad specs.
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "blocks.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

at::Tensor sliced_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         const std::string& in, const std::string& out) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dvn_kernels::sliced_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  const std::string spec =
      "in=" + in + " out=" + out + " stride=1,1 padding=1,1 dilation=1,1 groups=1";
  return op.call(x, w, b, spec);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  auto w = torch::randn({11, 13, 3, 3}, torch::dtype(torch::kDouble).requires_grad(true));
  auto b = torch::randn({11}, torch::dtype(torch::kDouble).requires_grad(true));
  auto x = torch::randn({2, 7, 9, 9}, torch::dtype(torch::kDouble).requires_grad(true));
  // Input channels 1..3 and 9..12, output channels 2..3 and 6..10.
  auto y = sliced_conv2d(x, w, b, "1+3,9+4", "2+2,6+5");
  const auto in_idx = torch::cat({torch::arange(1, 4), torch::arange(9, 13)});
  const auto out_idx = torch::cat({torch::arange(2, 4), torch::arange(6, 11)});
  auto w_active = w.index_select(0, out_idx).index_select(1, in_idx);
  auto expected = torch::conv2d(x, w_active, b.index_select(0, out_idx), 1, 1);
  expect(torch::allclose(y, expected), "forward equals conv2d of the gathered weight");

  auto g = torch::randn_like(y);
  auto grads = torch::autograd::grad({y}, {x, w, b}, {g});
  auto want = torch::autograd::grad({expected}, {x, w, b}, {g});
  for (size_t i = 0; i < grads.size(); ++i) {
    expect(torch::allclose(grads[i], want[i]), "gradient " + std::to_string(i));
  }

  const auto raises = [&](const std::string& in, const std::string& out, const std::string& what) {
    try {
      sliced_conv2d(x, w, b, in, out);
    } catch (const c10::ValueError& e) {
      return std::string(e.what()).find(what) != std::string::npos;
    }
    return false;
  };
  expect(raises("9+4,1+3", "2+2,6+5", "spec"), "unsorted ranges raise a ValueError naming spec");
  expect(raises("1+3,9+5", "2+2,6+5", "in_segments"),
         "a range past the weight's channels raises a ValueError naming in_segments");
  expect(raises("1+3,5+1,9+4", "2+2", "at most two ranges"), "three ranges are refused");
  expect(raises("1+3 x", "2+2", "spec"), "a malformed spec raises a ValueError naming spec");

  // scatter_block writes the block and zero-fills the rest.
  dvn::ChannelRanges out_r{2, 2, 6, 5}, in_r{1, 3, 9, 4};
  const auto block = torch::ones({7, 7, 3, 3}, torch::kDouble);
  const auto full = dvn::scatter_block(block, w.detach(), out_r, in_r);
  expect(full.sum().item<double>() == 7 * 7 * 9 &&
             full.index_select(0, out_idx).index_select(1, in_idx).min().item<double>() == 1,
         "scatter_block places the block and zeros elsewhere");

  if (failures == 0) std::cout << "dvn_kernels C++ tests passed\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
