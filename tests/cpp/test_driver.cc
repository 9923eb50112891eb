// C++ test driver, built with -fsanitize=address,undefined (cmake -DLADLE_SANITIZE=ON):
// runs the header parser over the attack corpus (every file must be refused
// with a ladle::Error, never crash or read out of bounds) and over valid seeds
// (must be accepted), then a few engine runs on files it writes itself:
// merges checked against a scalar reference, many small chunks on 2 threads,
// an injected ENOSPC, an input truncated under its mapping (SIGBUS -> error),
// a pass-through mismatch and out-of-range plans; the write combiner of shards; and
// DELLA and SCE jobs (method_runs.cc).
//
// Usage: ladle_test_driver [--attacks DIR] [--valid DIR] [--workdir DIR]
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "engine.h"
#include "fp8_requant.h"
#include "json.h"
#include "kernels.h"
#include "safetensors.h"
#include "shard_writer.h"
#include "write_combiner.h"

using namespace ladle;

namespace ladle {
void method_runs(void (*expect)(bool, const std::string&));  // method_runs.cc
void dare_boundary_runs(void (*expect)(bool, const std::string&));  // dare_boundary.cc
}  // namespace ladle

namespace {

int g_failures = 0;
int g_checks = 0;

void expect(bool cond, const std::string& what) {
  ++g_checks;
  if (!cond) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

std::vector<std::string> list_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors")
      out.push_back(dir + "/" + name);
  }
  closedir(d);
  return out;
}

void parse_corpus(const std::string& dir, bool expect_valid) {
  for (const std::string& path : list_files(dir)) {
    try {
      Header h = read_header(path);
      expect(expect_valid, path + ": accepted but it is an attack file");
    } catch (const Error& e) {
      expect(!expect_valid, path + ": refused a valid file: " + e.what());
      expect(std::strstr(e.what(), path.c_str()) != nullptr,
             path + ": message does not name the file: " + e.what());
    }
  }
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// One-tensor safetensors file with `n` F32 values f(i).
std::string make_input(const std::string& path, uint64_t n, const std::function<float(uint64_t)>& f) {
  TensorEntry t;
  t.name = "w";
  t.dtype = DType::kF32;
  t.shape = {n};
  t.n_elems = n;
  t.begin = 0;
  t.end = 4 * n;
  std::string bytes = serialize_header({t}, {{"format", "pt"}});
  for (uint64_t i = 0; i < n; ++i) {
    float v = f(i);
    bytes.append(reinterpret_cast<const char*>(&v), 4);
  }
  write_file(path, bytes);
  return path;
}

struct Merge {
  Plan plan;
  std::string out_path;
  uint64_t header_n_bytes = 0;
};

// out = wa * a + wb * b for the tensor 'w' of two inputs, written to out_path.
std::unique_ptr<Merge> plan_merge(const std::string& a, const std::string& b, float wa, float wb,
                                  const std::string& out_path, JobOp op = JobOp::kWeightedSum) {
  auto m = std::make_unique<Merge>();
  Header ha = read_header(a), hb = read_header(b);
  m->plan.sources.push_back({a, nullptr, 0, std::make_shared<MappedFile>(a, ha.file_n_bytes)});
  m->plan.sources.push_back({b, nullptr, 0, std::make_shared<MappedFile>(b, hb.file_n_bytes)});
  for (Source& s : m->plan.sources) {
    s.base = s.file->data();
    s.n_bytes = s.file->n_bytes();
  }
  TensorEntry t = ha.tensors[0];
  std::string header = serialize_header({t}, {});
  uint64_t size = header.size() + (t.end - t.begin);
  ::unlink(out_path.c_str());
  m->plan.sinks.push_back({out_path, nullptr, size, std::make_shared<ShardWriter>(out_path, size, header)});
  Job job;
  job.name = "w";
  job.op = op;
  job.n_elems = t.n_elems;
  job.out_offset = header.size();
  job.out_dtype = t.dtype;
  job.inputs = {{0, ha.data_start, t.dtype, wa}, {1, hb.data_start, t.dtype, wb}};
  m->plan.jobs.push_back(job);
  m->out_path = out_path;
  m->header_n_bytes = header.size();
  return m;
}

template <typename F>
void expect_error(ErrorKind kind, const std::string& what, F&& fn) {
  try {
    fn();
    expect(false, what + ": no error raised");
  } catch (const Error& e) {
    expect(e.kind() == kind, what + ": wrong error kind: " + e.what());
    std::printf("  ok  %s -> %s\n", what.c_str(), e.what());
  }
}

void engine_runs(const std::string& work) {
  const uint64_t n = 300000;
  std::string a = make_input(work + "/a.safetensors", n, [](uint64_t i) { return 0.5f * i; });
  std::string b = make_input(work + "/b.safetensors", n, [](uint64_t i) { return 1.0f - i; });
  for (KernelImpl kernel : {KernelImpl::kScalar, KernelImpl::kAuto}) {
    auto m = plan_merge(a, b, 0.25f, 0.75f, work + "/out.safetensors");
    EngineOptions options;
    options.threads = 2;
    options.chunk_elems = 4096 + 3;  // many chunks, tiles not multiple of the chunk
    options.kernel = kernel;
    RunStats stats = run_plan(m->plan, options, nullptr);
    m->plan.sinks[0].writer->finish();
    Header h = read_header(m->out_path);
    expect(h.tensors.size() == 1 && h.tensors[0].n_elems == n, "merged header is valid");
    std::ifstream f(m->out_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bool same = true;
    for (uint64_t i = 0; i < n && same; ++i) {
      float got;
      std::memcpy(&got, bytes.data() + h.data_start + 4 * i, 4);
      float want = 0.25f * (0.5f * i);
      want = want + 0.75f * (1.0f - i);
      same = std::memcmp(&got, &want, 4) == 0;
    }
    expect(same, std::string("merged values equal the reference (") + stats.kernel + ")");
    std::printf("  ok  merge of %llu elements in %llu chunks (%s)\n", (unsigned long long)n,
                (unsigned long long)stats.n_chunks, stats.kernel);
  }
  {
    auto m = plan_merge(a, b, 0.5f, 0.5f, work + "/full.safetensors");
    EngineOptions options;
    options.threads = 2;
    options.chunk_elems = 8192;
    set_enospc_fault_after(100000);
    expect_error(ErrorKind::kIO, "injected ENOSPC", [&] { run_plan(m->plan, options, nullptr); });
    set_enospc_fault_after(0);
  }
  {
    auto m = plan_merge(a, b, 1.0f, 0.0f, work + "/copy.safetensors", JobOp::kCopyIdentical);
    expect_error(ErrorKind::kMismatch, "pass-through of different bytes",
                 [&] { run_plan(m->plan, EngineOptions(), nullptr); });
  }
  {
    auto m = plan_merge(a, b, 1.0f, 1.0f, work + "/maxf.safetensors", JobOp::kMax);
    expect_error(ErrorKind::kValue, "elementwise max of float tensors",
                 [&] { run_plan(m->plan, EngineOptions(), nullptr); });
  }
  {
    // The same bytes read as I32: out[i] = max of the two inputs' bit patterns, across
    // chunk boundaries and threads (int policy 'max').
    auto m = plan_merge(a, b, 1.0f, 1.0f, work + "/max.safetensors", JobOp::kMax);
    Job& job = m->plan.jobs[0];
    job.out_dtype = DType::kI32;
    for (JobInput& in : job.inputs) in.dtype = DType::kI32;
    EngineOptions options;
    options.threads = 2;
    options.chunk_elems = 8192;
    run_plan(m->plan, options, nullptr);
    m->plan.sinks[0].writer->finish();
    std::ifstream f(m->out_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bool same = bytes.size() == m->header_n_bytes + 4 * n;
    for (uint64_t i = 0; i < n && same; ++i) {
      float fa = 0.5f * i, fb = 1.0f - i;
      int32_t xa, xb, got;
      std::memcpy(&xa, &fa, 4);
      std::memcpy(&xb, &fb, 4);
      std::memcpy(&got, bytes.data() + m->header_n_bytes + 4 * i, 4);
      same = got == std::max(xa, xb);
    }
    expect(same, "elementwise max of I32 inputs equals the reference");
    std::printf("  ok  elementwise max of %llu I32 elements\n", (unsigned long long)n);
  }
  {
    // nearswap across chunk boundaries and threads against the formula written out.
    auto m = plan_merge(a, b, 1.0f, 1.0f, work + "/nearswap.safetensors", JobOp::kNearSwap);
    m->plan.jobs[0].threshold = 3.0f;
    EngineOptions options;
    options.threads = 2;
    options.chunk_elems = 8192;
    run_plan(m->plan, options, nullptr);
    m->plan.sinks[0].writer->finish();
    std::ifstream f(m->out_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bool same = bytes.size() == m->header_n_bytes + 4 * n;
    for (uint64_t i = 0; i < n && same; ++i) {
      float fa = 0.5f * i, fb = 1.0f - i, got;
      float diff = std::fabs(fa - fb);
      float w = (1.0f / (diff < 1e-6f ? 1e-6f : diff)) * 3.0f;
      w = w > 1.0f ? 1.0f : w;
      float kept = w * fb, rest = (1.0f - w) * fa;
      std::memcpy(&got, bytes.data() + m->header_n_bytes + 4 * i, 4);
      same = got == kept + rest;
    }
    expect(same, "nearswap equals the reference");
    std::printf("  ok  nearswap of %llu F32 elements\n", (unsigned long long)n);
    m->plan.jobs[0].threshold = std::nanf("");
    expect_error(ErrorKind::kValue, "nearswap with a NaN t",
                 [&] { run_plan(m->plan, EngineOptions(), nullptr); });
  }
  for (uint64_t chunk : {uint64_t{4096 + 3}, uint64_t{1} << 20})
  for (KernelImpl kernel : {KernelImpl::kScalar, KernelImpl::kAuto}) {
    // --dtype fp8: the merge as [600, 500] F8_E4M3 with fresh 128x128 block scales
    // (partial blocks at both edges) after the codes in the same sink, against the
    // steps written out: s = amax / 448 per block, q = f8_e4m3(x / s). Chunks below
    // one block row (64000 elements) take two passes (fp8_two_pass.h), larger ones one.
    const uint64_t rows = 600, cols = 500, br = 128, bc = 128, grid_cols = 4;
    auto m = plan_merge(a, b, 0.25f, 0.75f, work + "/fp8.safetensors");
    Job& job = m->plan.jobs[0];
    job.out_dtype = DType::kF8_E4M3;
    job.out_scale = {0, m->header_n_bytes + n, br, bc, cols, DType::kF32};
    EngineOptions options;
    options.threads = 2;
    options.chunk_elems = chunk;
    options.kernel = kernel;
    run_plan(m->plan, options, nullptr);
    m->plan.sinks[0].writer->finish();
    std::ifstream f(m->out_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<float> x(n), scales(5 * grid_cols, 0.0f);
    for (uint64_t i = 0; i < n; ++i) {
      x[i] = 0.25f * (0.5f * i);
      x[i] = x[i] + 0.75f * (1.0f - i);
      float& s = scales[(i / cols / br) * grid_cols + (i % cols) / bc];
      s = std::max(s, std::fabs(x[i]));
    }
    for (float& s : scales) s = block_scale_of(s, DType::kF32);
    bool same = true;
    for (uint64_t i = 0; i < n && same; ++i) {
      float s = scales[(i / cols / br) * grid_cols + (i % cols) / bc];
      same = static_cast<uint8_t>(bytes[m->header_n_bytes + i]) == f32_to_f8_e4m3(x[i] / s);
    }
    same = same && std::memcmp(bytes.data() + m->header_n_bytes + n, scales.data(),
                               4 * scales.size()) == 0;
    expect(same && rows * cols == n, "FP8 codes and fresh block scales equal the reference");
    std::printf("  ok  fp8 requantization of %llu elements (%s, %s)\n", (unsigned long long)n,
                select_kernels(kernel).name, chunk < br * cols ? "two passes" : "one pass");
  }
  {
    auto m = plan_merge(a, b, 0.5f, 0.5f, work + "/range.safetensors");
    m->plan.jobs[0].inputs[1].offset = UINT64_MAX - 3;
    expect_error(ErrorKind::kFormat, "input offset wrapping around",
                 [&] { run_plan(m->plan, EngineOptions(), nullptr); });
    m->plan.jobs[0].inputs[1].offset = 8;
    m->plan.jobs[0].n_elems = UINT64_MAX / 2;
    expect_error(ErrorKind::kFormat, "element count overflowing the byte size",
                 [&] { run_plan(m->plan, EngineOptions(), nullptr); });
  }
  {
    std::string c = make_input(work + "/c.safetensors", n, [](uint64_t i) { return 2.0f * i; });
    auto m = plan_merge(a, c, 0.5f, 0.5f, work + "/bus.safetensors");
    expect(::truncate(c.c_str(), 8192) == 0, "truncate the mapped input");
    EngineOptions options;
    options.threads = 2;
    options.chunk_elems = 8192;
    expect_error(ErrorKind::kIO, "input truncated while mapped (SIGBUS)",
                 [&] { run_plan(m->plan, options, nullptr); });
  }
  {
    auto m = plan_merge(a, b, 0.5f, 0.5f, work + "/cancel.safetensors");
    EngineOptions options;
    options.threads = 1;
    options.chunk_elems = 4096;
    expect_error(ErrorKind::kCancelled, "progress callback cancels",
                 [&] { run_plan(m->plan, options, [](uint64_t, uint64_t) { return false; }); });
  }
}

}  // namespace

// FP8 and fp64 conversions under the sanitizers: every code round-trips, a stride
// through all fp32 patterns converts without UB, and fp64 jobs keep fp64.
void conversions_run() {
  for (int c = 0; c < 256; ++c) {
    uint8_t b = static_cast<uint8_t>(c);
    if ((b & 0x7F) != 0x7F) expect(f32_to_f8_e4m3(f8_e4m3_to_f32(b)) == b, "e4m3 round trip");
    if ((b & 0x7C) != 0x7C || (b & 0x03) == 0)
      expect(f32_to_f8_e5m2(f8_e5m2_to_f32(b)) == b, "e5m2 round trip");
  }
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4099) {
    float f = f32_from_bits(static_cast<uint32_t>(u));
    uint8_t e4 = f32_to_f8_e4m3(f), e5 = f32_to_f8_e5m2(f);
    expect(f == f || (e4 == 0x7F && e5 == 0x7F), "fp8 NaN is 0x7F");
  }
  double x[2] = {1e300, 0.1}, acc[2];
  accumulate_f64(DType::kF64, x, 0.5, acc, 2, true);
  accumulate_f64(DType::kF64, x, 0.5, acc, 2, false);
  double out[2];
  store_f64(DType::kF64, acc, 1.0, out, 2);
  expect(out[0] == 1e300 && out[1] == 0.1, "fp64 job keeps 1e300 and 0.1");
}

// WriteCombiner: small writes given out of order (a straggler behind the window, a
// jump past it, a large write) come out as fewer writes that cover exactly the
// bytes given, never overlapping, with the bytes given.
void write_combiner_run() {
  const uint64_t piece = 1000, n_pieces = 3000;  // 3 MB: the window moves
  std::vector<uint64_t> order(n_pieces);
  for (uint64_t i = 0; i < n_pieces; ++i) order[i] = i;
  // As two workers finish them: neighbours swapped (piece 0 lands behind the window
  // piece 1 opened), and piece 100 arrives 40 pieces late.
  for (uint64_t i = 0; i + 1 < n_pieces; i += 2) std::swap(order[i], order[i + 1]);
  std::rotate(order.begin() + 100, order.begin() + 101, order.begin() + 141);
  std::vector<uint8_t> file(piece * n_pieces + 100000, 0), want(file.size(), 0);
  std::vector<std::pair<uint64_t, uint64_t>> writes;
  auto write = [&](uint64_t at, const uint8_t* data, uint64_t n) {
    writes.emplace_back(at, n);
    std::memcpy(file.data() + at, data, n);
  };
  WriteCombiner combiner;
  std::vector<uint8_t> bytes(100000);
  for (uint64_t i : order) {
    for (uint64_t k = 0; k < piece; ++k) bytes[k] = static_cast<uint8_t>(i * 7 + k);
    std::memcpy(want.data() + i * piece, bytes.data(), piece);
    if (!combiner.add(i * piece, bytes.data(), piece, write)) write(i * piece, bytes.data(), piece);
  }
  for (uint64_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<uint8_t>(k + 1);
  uint64_t big_at = piece * n_pieces;
  std::memcpy(want.data() + big_at, bytes.data(), bytes.size());
  expect(!combiner.add(big_at, bytes.data(), bytes.size(), write), "large writes go direct");
  write(big_at, bytes.data(), bytes.size());
  combiner.flush(write);
  std::sort(writes.begin(), writes.end());
  bool disjoint = true;
  uint64_t covered = 0;
  for (size_t i = 0; i < writes.size(); ++i) {
    covered += writes[i].second;
    if (i && writes[i - 1].first + writes[i - 1].second > writes[i].first) disjoint = false;
  }
  expect(disjoint && covered == want.size(), "combined writes are disjoint and cover all bytes");
  expect(file == want, "combined writes hold the bytes given");
  expect(writes.size() < 10, "small writes are combined into few");
  std::printf("  ok  %llu small writes combined into %zu\n", (unsigned long long)n_pieces,
              writes.size());
}

int main(int argc, char** argv) {
  std::string attacks, valid, work = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--attacks") attacks = argv[i + 1];
    else if (flag == "--valid") valid = argv[i + 1];
    else if (flag == "--workdir") work = argv[i + 1];
  }
  if (!attacks.empty()) {
    size_t n = list_files(attacks).size();
    parse_corpus(attacks, false);
    std::printf("parser: %zu attack files refused\n", n);
    expect(n > 0, "attack corpus is not empty");
  }
  if (!valid.empty()) {
    parse_corpus(valid, true);
    std::printf("parser: %zu valid files accepted\n", list_files(valid).size());
  }
  // Deep nesting must be refused by depth, not by exhausting the stack.
  std::string deep(200000, '[');
  JsonValue root;
  std::string error;
  expect(!parse_json(deep, &root, &error) && error.find("nesting") != std::string::npos,
         "deeply nested JSON refused: " + error);
  char tmpl[] = "/tmp/ladle-driver-XXXXXX";
  std::string dir = work == "/tmp" ? std::string(mkdtemp(tmpl)) : work;
  engine_runs(dir);
  write_combiner_run();
  conversions_run();
  method_runs(expect);
  dare_boundary_runs(expect);
  if (work == "/tmp") std::filesystem::remove_all(dir);
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
