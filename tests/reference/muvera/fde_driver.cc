// A small command-line driver around Google's MUVERA fixed-dimensional
// encodings (graph-mining's sketching/point_cloud/fixed_dimensional_encoding.cc,
// as shipped in the muvera-fde 0.1.0 sdist), used once, in a scratch directory,
// by make_muvera_reference.py to record tests/reference/muvera/muvera_reference.npz.
// It is not part of m3lab and is never built by its tests.
//
// The .cc is included textually so that the driver can also call the helpers
// in its anonymous namespace (SimHashMatrixFromSeed, AMSProjectionMatrixFromSeed),
// which lets the reference record Google's random matrices themselves.
//
// All arrays travel as raw little-endian float32 / uint32 files.
//
//   fde_driver fde DIM REPS SIMHASH SEED ENC PROJ PDIM FILL FINAL IN COUNT OUT
//       ENC 0=DEFAULT_SUM (query) 1=AVERAGE (document); PROJ 0=identity 1=AMS;
//       FINAL < 0: no final projection. IN holds COUNT floats: the point cloud,
//       row-major (COUNT not a multiple of DIM exercises Google's size check).
//       Writes the FDE to OUT; on an error status prints it and exits 3.
//   fde_driver simhash SEED DIM NPROJ OUT     DIM x NPROJ, row-major
//   fde_driver ams SEED DIM PDIM OUT          DIM x PDIM, row-major
//   fde_driver countsketch SEED FINAL IN N OUT
//   fde_driver logf IN N OUT                  std::log(float) of each input
//   fde_driver mt SEED N OUT                  raw std::mt19937 outputs (uint32)

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fixed_dimensional_encoding.cc"

namespace {

template <typename T>
std::vector<T> ReadArray(const char* path, size_t n) {
  std::vector<T> v(n);
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr || std::fread(v.data(), sizeof(T), n, f) != n) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", n, path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

template <typename T>
void WriteArray(const char* path, const T* data, size_t n) {
  FILE* f = std::fopen(path, "wb");
  if (f == nullptr || std::fwrite(data, sizeof(T), n, f) != n) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
}

void WriteRowMajor(const char* path, const Eigen::MatrixXf& m) {
  std::vector<float> out(m.rows() * m.cols());
  for (int i = 0; i < m.rows(); ++i)
    for (int j = 0; j < m.cols(); ++j) out[i * m.cols() + j] = m(i, j);
  WriteArray(path, out.data(), out.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: see the header of fde_driver.cc\n");
    return 2;
  }
  const std::string cmd = argv[1];
  using graph_mining::FixedDimensionalEncodingConfig;
  if (cmd == "fde" && argc == 14) {
    FixedDimensionalEncodingConfig config;
    config.set_dimension(std::atoi(argv[2]));
    config.set_num_repetitions(std::atoi(argv[3]));
    config.set_num_simhash_projections(std::atoi(argv[4]));
    config.set_seed(std::atoi(argv[5]));
    config.set_encoding_type(
        static_cast<FixedDimensionalEncodingConfig::EncodingType>(std::atoi(argv[6])));
    config.set_projection_type(
        static_cast<FixedDimensionalEncodingConfig::ProjectionType>(std::atoi(argv[7])));
    config.set_projection_dimension(std::atoi(argv[8]));
    config.set_fill_empty_partitions(std::atoi(argv[9]) != 0);
    const int final_dim = std::atoi(argv[10]);
    if (final_dim >= 0) config.set_final_projection_dimension(final_dim);
    const size_t count = std::strtoul(argv[12], nullptr, 10);
    std::vector<float> points = ReadArray<float>(argv[11], count);
    absl::StatusOr<std::vector<float>> fde =
        graph_mining::GenerateFixedDimensionalEncoding(points, config);
    if (!fde.ok()) {
      std::printf("%s\n", std::string(fde.status().message()).c_str());
      return 3;
    }
    WriteArray(argv[13], fde->data(), fde->size());
    return 0;
  }
  if (cmd == "simhash" && argc == 6) {
    WriteRowMajor(argv[5], graph_mining::internal::SimHashMatrixFromSeed(
                               std::strtoul(argv[2], nullptr, 10),
                               std::atoi(argv[3]), std::atoi(argv[4])));
    return 0;
  }
  if (cmd == "ams" && argc == 6) {
    WriteRowMajor(argv[5], graph_mining::internal::AMSProjectionMatrixFromSeed(
                               std::strtoul(argv[2], nullptr, 10),
                               std::atoi(argv[3]), std::atoi(argv[4])));
    return 0;
  }
  if (cmd == "countsketch" && argc == 7) {
    const size_t n = std::strtoul(argv[5], nullptr, 10);
    std::vector<float> in = ReadArray<float>(argv[4], n);
    std::vector<float> out = graph_mining::internal::ApplyCountSketchToVector(
        in, std::strtoul(argv[3], nullptr, 10), std::strtoul(argv[2], nullptr, 10));
    WriteArray(argv[6], out.data(), out.size());
    return 0;
  }
  if (cmd == "logf" && argc == 5) {
    const size_t n = std::strtoul(argv[3], nullptr, 10);
    std::vector<float> in = ReadArray<float>(argv[2], n);
    std::vector<float> out(n);
    // volatile keeps the compiler from folding or vectorising away libm's logf
    for (size_t i = 0; i < n; ++i) {
      volatile float x = in[i];
      out[i] = std::log(static_cast<float>(x));
    }
    WriteArray(argv[4], out.data(), out.size());
    return 0;
  }
  if (cmd == "mt" && argc == 5) {
    std::mt19937 gen(std::strtoul(argv[2], nullptr, 10));
    const size_t n = std::strtoul(argv[3], nullptr, 10);
    std::vector<uint32_t> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(gen());
    WriteArray(argv[4], out.data(), out.size());
    return 0;
  }
  std::fprintf(stderr, "bad command or argument count: %s (%d args)\n", cmd.c_str(), argc);
  return 2;
}
