// The pybind11 file of the optional CUDA backend, ladle._cuda: device status,
// the streaming engine over a ladle._core Plan (handed over as a capsule), and
// DeviceSum over raw device pointers. Importing it needs no driver or GPU: the
// CUDA runtime is linked statically and looks for the driver on first use.
#include <Python.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "engine_cuda.h"
#include "kernels_cuda.h"
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

py::dict run(const py::capsule& plan_capsule, int device, int workers, uint64_t memory_budget,
             uint64_t chunk_elems, bool check_finite, bool emulate, py::object progress) {
  LADLE_CHECK(std::string(plan_capsule.name() ? plan_capsule.name() : "") == kPlanCapsuleName,
              ErrorKind::kValue, "expected a capsule from ladle._core.Plan._capsule()");
  const Plan& plan = *plan_capsule.get_pointer<Plan>();
  cuda::Options options;
  options.device = device;
  options.workers = workers;
  options.memory_budget = memory_budget;
  options.chunk_elems = chunk_elems;
  options.check_finite = check_finite;
  options.backend = backend_from(emulate);
  ProgressFn on_progress = python_progress(progress);
  RunStats stats;
  {
    py::gil_scoped_release release;
    stats = cuda::run_plan(plan, options, on_progress);
  }
  return stats_to_dict(stats);
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
  m.def("supports", [](const std::string& kind) { return cuda::supports(parse_job_kind(kind)); },
        py::arg("kind"), "Whether the CUDA backend runs job kind sum/copy/max/task/gram/dot.");
  m.def("run", &run, py::arg("plan"), py::arg("device") = 0, py::arg("workers") = 3,
        py::arg("memory_budget") = 256ull << 20, py::arg("chunk_elems") = 0,
        py::arg("check_finite") = false, py::arg("emulate") = false,
        py::arg("progress") = py::none(),
        "Run a ladle._core Plan (its _capsule()) through the GPU; same results as _core.run.");

  py::class_<cuda::DeviceSum>(m, "DeviceSum")
      .def(py::init(&make_device_sum), py::arg("device"), py::arg("tensors"),
           py::arg("emulate") = false,
           "tensors: [(name, out_address, out_dtype, n_elems, [(in_address, in_dtype), ...])]")
      .def(
          "run",
          [](cuda::DeviceSum& self, const std::vector<double>& weights, double post_scale,
             uint64_t stream) {
            std::vector<float> w32(weights.begin(), weights.end());
            py::gil_scoped_release release;
            self.run(w32, static_cast<float>(post_scale), stream);
          },
          py::arg("weights"), py::arg("post_scale") = 1.0, py::arg("stream") = 0,
          "Enqueue one launch computing every tensor on `stream` (a cudaStream_t as int).")
      .def_property_readonly("n_inputs", &cuda::DeviceSum::n_inputs)
      .def_property_readonly("n_tensors", &cuda::DeviceSum::n_tensors)
      .def_property_readonly("n_elems", &cuda::DeviceSum::n_elems);
}
