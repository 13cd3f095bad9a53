// dvn_kernels::AotiPackage: an AOTInductor package (the `compiled` runtime's batch-1 level) whose calls
// run without the GIL. torch's own loader (torch._C._aoti.AOTIModelPackageLoader) holds the GIL
// for the whole call: a thread calling a compiled level stopped every other Python thread, a
// server's event loop included. Methods of a TorchScript custom class are called with the GIL
// released (torch/csrc/jit/python/pybind_utils.h, runAndInsertCall).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

namespace dvn {

struct AotiPackage : torch::CustomClassHolder {
  explicit AotiPackage(const std::string& path) : loader_(path) {}

  // The package's outputs for `inputs` (flattened, as torch.export saw them). The container
  // serialises concurrent calls on its one model instance.
  std::vector<at::Tensor> run(std::vector<at::Tensor> inputs) {
    return loader_.boxed_run(std::move(inputs));
  }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

}  // namespace dvn

TORCH_LIBRARY_FRAGMENT(dvn_kernels, m) {
  m.class_<dvn::AotiPackage>("AotiPackage")
      .def(torch::init<std::string>())
      .def("run", &dvn::AotiPackage::run);
}
