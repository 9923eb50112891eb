// The pybind11 file of the optional CUDA backend, ladle._cuda: device status,
// the streaming engine over a ladle._core Plan (handed over as a capsule), and
// DeviceSum over raw device pointers. Importing it needs no driver or GPU: the
// CUDA runtime is linked statically and looks for the driver on first use.
#include <Python.h>

#include <optional>
#include <vector>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "engine_cuda.h"
#include "kernels_cuda.h"
#include "method_bench_cuda.h"
#include "plan_runner_cuda.h"
#include "py_common.h"

namespace py = pybind11;
using namespace ladle;

namespace {


cuda::Backend backend_from(bool emulate) {
  return emulate ? cuda::Backend::kEmulator : cuda::Backend::kCuda;
}

py::dict status_dict() {
  cuda::Status s = cuda::status();
  py::dict out;
  out["device_count"] = s.device_count;
  out["runtime_version"] = s.runtime_version;
  out["driver_version"] = s.driver_version;
  out["error"] = s.error;
  return out;
}

py::dict device_props_dict(int device) {
  cuda::DeviceProps p = cuda::device_props(device);
  py::dict out;
  out["name"] = p.name;
  out["compute_capability"] = py::make_tuple(p.major, p.minor);
  out["sm_count"] = p.sm_count;
  out["total_n_bytes"] = p.total_n_bytes;
  return out;
}

py::dict build_info() {
  py::dict info;
  info["version"] = LADLE_VERSION;
  info["archs"] = cuda::compiled_archs();
  info["cudart"] = "static";
  info["runtime_version"] = cuda::status().runtime_version;
  return info;
}

// The object a capsule from ladle._core holds, after checking the capsule's name.
template <class T>
const T& from_capsule(const py::capsule& capsule, const char* name, const char* made_by) {
  LADLE_CHECK(std::string(capsule.name() ? capsule.name() : "") == name, ErrorKind::kValue,
              "expected a capsule from ladle._core.%s", made_by);
  return *capsule.get_pointer<T>();
}

cuda::Options options_from(int device, int workers, uint64_t memory_budget, uint64_t chunk_elems,
                           bool check_finite, bool emulate) {
  cuda::Options options;
  options.device = device;
  options.workers = workers;
  options.memory_budget = memory_budget;
  options.chunk_elems = chunk_elems;
  options.check_finite = check_finite;
  options.backend = backend_from(emulate);
  return options;
}

// The jobs of `kinds` (None: every kind) of a ladle._core Plan, through
// cuda::run_jobs (plan_runner_cuda.h); results as ladle._core.run's.
py::dict run(const py::capsule& plan_capsule, const std::optional<std::vector<JobKind>>& kinds,
             int device, int workers, uint64_t memory_budget, uint64_t chunk_elems,
             bool check_finite, bool emulate, py::object progress) {
  const Plan& plan = from_capsule<Plan>(plan_capsule, kPlanCapsuleName, "Plan._capsule()");
  cuda::Options options =
      options_from(device, workers, memory_budget, chunk_elems, check_finite, emulate);
  ProgressFn on_progress = python_progress(progress);
  PlanResults results;
  {
    py::gil_scoped_release release;
    results = cuda::run_jobs(plan, kind_set(kinds), options, on_progress);
  }
  return results_to_dict(results);
}

using TensorSpec = std::tuple<std::string, uint64_t, std::string, uint64_t,
                              std::vector<std::pair<uint64_t, std::string>>>;

std::unique_ptr<cuda::DeviceSum> make_device_sum(int device, const std::vector<TensorSpec>& specs,
                                                 bool emulate) {
  std::vector<cuda::DeviceTensor> tensors;
  tensors.reserve(specs.size());
  for (const auto& [name, out_address, out_dtype, n_elems, inputs] : specs) {
    cuda::DeviceTensor t;
    t.name = name;
    t.out_address = out_address;
    t.out_dtype = dtype_from(out_dtype);
    t.n_elems = n_elems;
    for (const auto& [address, dtype] : inputs) {
      t.in_addresses.push_back(address);
      t.in_dtypes.push_back(dtype_from(dtype));
    }
    tensors.push_back(std::move(t));
  }
  return std::make_unique<cuda::DeviceSum>(device, std::move(tensors), backend_from(emulate));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ladle's optional CUDA backend (runtime linked statically; imports without a GPU)";

  register_error_translator();

  m.def("status", &status_dict,
        "Device count, runtime/driver versions and, when unusable, why. Never raises.");
  m.def("device_props", &device_props_dict, py::arg("device") = 0);
  m.def("build_info", &build_info);
  m.def("supports", [](JobKind kind) { return cuda::supports(kind); }, py::arg("kind"),
        "Whether the CUDA backend runs jobs of `kind` (a ladle._core.JobKind).");
  m.def("run", &run, py::arg("plan"), py::arg("kinds") = py::none(), py::arg("device") = 0,
        py::arg("workers") = 3, py::arg("memory_budget") = 256ull << 20,
        py::arg("chunk_elems") = 0, py::arg("check_finite") = false, py::arg("emulate") = false,
        py::arg("progress") = py::none(),
        "Run the jobs of `kinds` (default: every kind) of a ladle._core Plan (its _capsule()) "
        "on the GPU; same bits and results as _core.run. Kinds it lacks (supports) are "
        "refused when the plan holds such jobs.");

  m.def(
      "time_method_pass",
      [](const std::string& pass, const std::string& sparsify, uint64_t n_elems,
         uint32_t n_models, const std::string& dtype, int repeat, int device) {
        cuda::PassTiming t;
        {
          py::gil_scoped_release release;
          t = cuda::time_method_pass(device, pass, sparsify, n_elems, n_models, dtype_from(dtype),
                                     repeat);
        }
        return py::make_tuple(t.seconds, t.bytes);
      },
      py::arg("pass_"), py::arg("sparsify"), py::arg("n_elems"), py::arg("n_models"),
      py::arg("dtype"), py::arg("repeat") = 10, py::arg("device") = 0,
      "Benchmarks: (seconds per launch, bytes read + written) of one method pass over "
      "device-resident inputs (hist_hi, hist_lo, ties, l1, apply, gram).");

  py::class_<cuda::DeviceSum>(m, "DeviceSum")
      .def(py::init(&make_device_sum), py::arg("device"), py::arg("tensors"),
           py::arg("emulate") = false,
           "tensors: [(name, out_address, out_dtype, n_elems, [(in_address, in_dtype), ...])]")
      .def(
          "run",
          [](cuda::DeviceSum& self, const std::vector<double>& weights, double post_scale,
             uint64_t stream) {
            py::gil_scoped_release release;
            self.run(weights, static_cast<float>(post_scale), stream);
          },
          py::arg("weights"), py::arg("post_scale") = 1.0, py::arg("stream") = 0,
          "Enqueue one launch computing every tensor on `stream` (a cudaStream_t as int).")
      .def_property_readonly("n_inputs", &cuda::DeviceSum::n_inputs)
      .def_property_readonly("n_tensors", &cuda::DeviceSum::n_tensors)
      .def_property_readonly("n_elems", &cuda::DeviceSum::n_elems);
}
