// Runs an AOTInductor package (.pt2) whose graph calls torch.ops.gateshift.*, from C++.
//
// The package holds the compiled model; the fused ops it calls are registered by
// libgateshift (built by CMakeLists.txt), which this program links with --no-as-needed
// so that its static initialisers run before the package is loaded. A deployment does
// the same, or dlopen()s libgateshift.so with RTLD_GLOBAL first.
//
//   gateshift_aoti_run model.pt2 input.bin expected.bin N C H W
//
// input.bin: the (N, C, H, W) float32 input, raw; expected.bin: the output's float32
// values in order. Prints "ok" and the output's sizes when the package reproduces them.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<float> read_floats(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::vector<float> values(bytes.size() / sizeof(float));
  std::copy(bytes.begin(), bytes.begin() + values.size() * sizeof(float), reinterpret_cast<char*>(values.data()));
  return values;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::cerr << "usage: " << argv[0] << " model.pt2 input.bin expected.bin N C H W\n";
    return 2;
  }
  std::vector<int64_t> shape;
  for (int i = 4; i < 8; ++i) shape.push_back(std::stoll(argv[i]));
  std::vector<float> input = read_floats(argv[2]);
  std::vector<float> expected = read_floats(argv[3]);
  at::Tensor x = at::from_blob(input.data(), shape, at::kFloat);
  if (x.numel() != static_cast<int64_t>(input.size())) {
    std::cerr << "input.bin holds " << input.size() << " floats, not N*C*H*W = " << x.numel() << "\n";
    return 2;
  }
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  std::vector<at::Tensor> outputs = loader.run({x});
  at::Tensor out = outputs.at(0).contiguous().view(-1);
  at::Tensor want = at::from_blob(expected.data(), {static_cast<int64_t>(expected.size())}, at::kFloat);
  if (out.numel() != want.numel() || !at::allclose(out, want, 1e-5, 1e-5)) {
    std::cerr << "output differs from expected.bin: " << out.numel() << " values against " << want.numel();
    if (out.numel() == want.numel()) std::cerr << ", max difference " << (out - want).abs().max().item<float>();
    std::cerr << "\n";
    return 1;
  }
  std::cout << "ok " << outputs[0].sizes() << std::endl;
  return 0;
}
