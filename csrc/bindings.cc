// The only pybind11 file: exposes header parsing, plans and the engine as
// ladle._core, releases the GIL while the engine runs, and maps ladle::Error
// kinds onto the exception classes of ladle.errors.
#include <Python.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "engine.h"
#include "reduce.h"
#include "safetensors.h"

namespace py = pybind11;
using namespace ladle;

namespace {

DType dtype_from(const std::string& name) {
  DType d;
  LADLE_CHECK(parse_dtype(name, &d), ErrorKind::kValue, "unknown dtype '%s'", name.c_str());
  return d;
}

KernelImpl kernel_from(const std::string& name) {
  if (name == "auto") return KernelImpl::kAuto;
  if (name == "scalar") return KernelImpl::kScalar;
  if (name == "avx2") return KernelImpl::kAvx2;
  raise(ErrorKind::kValue, format("unknown kernel '%s' (auto, scalar, avx2)", name.c_str()));
}

py::dict header_to_dict(const Header& h) {
  py::dict out;
  out["header_n_bytes"] = h.header_n_bytes;
  out["data_start"] = h.data_start;
  out["file_n_bytes"] = h.file_n_bytes;
  py::dict metadata;
  for (const auto& [k, v] : h.metadata) metadata[py::str(k)] = py::str(v);
  out["metadata"] = h.has_metadata ? py::object(metadata) : py::object(py::none());
  py::list tensors;
  for (const TensorEntry& t : h.tensors)
    tensors.append(py::make_tuple(t.name, dtype_name(t.dtype), t.shape, t.begin, t.end));
  out["tensors"] = tensors;
  return out;
}

// Python-facing wrapper that owns the plan's files and writers.
class PyPlan {
 public:
  uint32_t add_file_source(const std::string& path, uint64_t expected_n_bytes) {
    auto file = std::make_shared<MappedFile>(path, expected_n_bytes);
    plan_.sources.push_back({path, file->data(), file->n_bytes(), file});
    return static_cast<uint32_t>(plan_.sources.size() - 1);
  }
  uint32_t add_memory_source(const std::string& label, uintptr_t address, uint64_t n_bytes) {
    plan_.sources.push_back({label, reinterpret_cast<const uint8_t*>(address), n_bytes, nullptr});
    return static_cast<uint32_t>(plan_.sources.size() - 1);
  }
  uint32_t add_file_sink(const std::string& path, uint64_t n_bytes, const py::bytes& header) {
    auto writer = std::make_shared<ShardWriter>(path, n_bytes, std::string(header));
    plan_.sinks.push_back({path, nullptr, n_bytes, writer});
    return static_cast<uint32_t>(plan_.sinks.size() - 1);
  }
  uint32_t add_memory_sink(const std::string& label, uintptr_t address, uint64_t n_bytes) {
    plan_.sinks.push_back({label, reinterpret_cast<uint8_t*>(address), n_bytes, nullptr});
    return static_cast<uint32_t>(plan_.sinks.size() - 1);
  }
  void add_job(const std::string& name, const std::string& op, uint64_t n_elems, uint32_t sink,
               uint64_t out_offset, const std::string& out_dtype,
               const std::vector<std::tuple<uint32_t, uint64_t, std::string, double>>& inputs,
               double post_scale) {
    Job job;
    job.name = name;
    if (op == "sum") job.op = JobOp::kWeightedSum;
    else if (op == "copy") job.op = JobOp::kCopyIdentical;
    else raise(ErrorKind::kValue, format("unknown job op '%s' (sum, copy)", op.c_str()));
    job.n_elems = n_elems;
    job.sink = sink;
    job.out_offset = out_offset;
    job.out_dtype = dtype_from(out_dtype);
    job.post_scale = static_cast<float>(post_scale);
    for (const auto& [source, offset, dtype, weight] : inputs)
      job.inputs.push_back({source, offset, dtype_from(dtype), static_cast<float>(weight)});
    plan_.jobs.push_back(std::move(job));
  }
  // fsyncs and closes every shard; the files are complete after this.
  void finish_sinks() {
    for (Sink& s : plan_.sinks)
      if (s.writer) s.writer->finish();
  }
  void clear_jobs() { plan_.jobs.clear(); }
  size_t n_jobs() const { return plan_.jobs.size(); }
  const Plan& plan() const { return plan_; }

 private:
  Plan plan_;
};

py::dict run(const PyPlan& plan, int threads, uint64_t memory_budget, uint64_t chunk_elems,
             bool check_finite, const std::string& kernel, py::object progress) {
  EngineOptions options;
  options.threads = threads;
  options.memory_budget = memory_budget;
  options.chunk_elems = chunk_elems;
  options.check_finite = check_finite;
  options.kernel = kernel_from(kernel);
  // Runs on the calling thread with the GIL re-acquired: lets Ctrl-C and the
  // user's callback stop the run between chunks.
  ProgressFn on_progress = [&progress](uint64_t done, uint64_t total) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (progress.is_none()) return true;
    py::object keep = progress(done, total);
    return keep.is_none() || keep.cast<bool>();
  };
  RunStats stats;
  {
    py::gil_scoped_release release;
    stats = run_plan(plan.plan(), options, on_progress);
  }
  py::dict out;
  out["bytes_read"] = stats.bytes_read;
  out["bytes_written"] = stats.bytes_written;
  out["n_chunks"] = stats.n_chunks;
  out["chunk_elems"] = stats.chunk_elems;
  out["threads"] = stats.threads;
  out["seconds"] = stats.seconds;
  out["kernel"] = stats.kernel;
  return out;
}

using DotInput = std::tuple<uint32_t, uint64_t, std::string>;  // (source, offset, dtype)

// Streamed fp64 dot products <lhs, x_k> per job (the learned soup's gradient).
std::vector<std::vector<double>> py_dot_products(
    const PyPlan& plan,
    const std::vector<std::tuple<std::string, uint64_t, DotInput, std::vector<DotInput>>>& jobs,
    int threads, uint64_t memory_budget, uint64_t chunk_elems) {
  auto to_input = [](const DotInput& d) {
    return JobInput{std::get<0>(d), std::get<1>(d), dtype_from(std::get<2>(d)), 1.0f};
  };
  std::vector<DotJob> dot_jobs;
  for (const auto& [name, n_elems, lhs, inputs] : jobs) {
    DotJob job;
    job.name = name;
    job.n_elems = n_elems;
    job.lhs = to_input(lhs);
    for (const DotInput& in : inputs) job.inputs.push_back(to_input(in));
    dot_jobs.push_back(std::move(job));
  }
  DotOptions options;
  options.threads = threads;
  options.memory_budget = memory_budget;
  options.chunk_elems = chunk_elems;
  py::gil_scoped_release release;
  return ladle::dot_products(plan.plan(), dot_jobs, options);
}

py::bytes serialize(const std::vector<std::tuple<std::string, std::string, std::vector<uint64_t>,
                                                 uint64_t, uint64_t>>& tensors,
                    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<TensorEntry> entries;
  for (const auto& [name, dtype, shape, begin, end] : tensors) {
    TensorEntry t;
    t.name = name;
    t.dtype = dtype_from(dtype);
    t.shape = shape;
    t.begin = begin;
    t.end = end;
    entries.push_back(std::move(t));
  }
  return py::bytes(serialize_header(entries, metadata));
}

py::dict build_info() {
  py::dict info;
  info["version"] = LADLE_VERSION;
  info["compiler"] = __VERSION__;
#ifdef LADLE_HAVE_AVX2
  info["avx2_compiled"] = true;
#else
  info["avx2_compiled"] = false;
#endif
  info["avx2_cpu"] = cpu_supports_avx2();
  info["kernel"] = select_kernels(KernelImpl::kAuto).name;
  info["cuda_compiled"] = false;
  return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ladle's C++ core: safetensors parsing, streaming merge engine";

  py::module_ errors = py::module_::import("ladle.errors");
  static py::object format_error = errors.attr("FormatError");
  static py::object mismatch_error = errors.attr("MismatchError");
  static py::object io_error = errors.attr("LadleIOError");
  static py::object value_error = errors.attr("LadleValueError");
  static py::object nonfinite_error = errors.attr("NonFiniteError");
  static py::object cancelled_error = errors.attr("CancelledError");
  static py::object backend_error = errors.attr("BackendError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::object cls;
      switch (e.kind()) {
        case ErrorKind::kFormat: cls = format_error; break;
        case ErrorKind::kMismatch: cls = mismatch_error; break;
        case ErrorKind::kIO: cls = io_error; break;
        case ErrorKind::kValue: cls = value_error; break;
        case ErrorKind::kNonFinite: cls = nonfinite_error; break;
        case ErrorKind::kCancelled: cls = cancelled_error; break;
        case ErrorKind::kBackend: cls = backend_error; break;
      }
      py::object exc = e.kind() == ErrorKind::kIO && e.os_errno() != 0
                           ? cls(e.os_errno(), e.what())
                           : cls(e.what());
      PyErr_SetObject(cls.ptr(), exc.ptr());
    }
  });

  m.def("read_header", [](const std::string& path) { return header_to_dict(read_header(path)); },
        py::arg("path"), "Read and validate a safetensors header (no tensor data is read).");
  m.def("parse_header",
        [](const std::string& label, const py::bytes& json, uint64_t file_n_bytes) {
          return header_to_dict(parse_header(label, std::string(json), file_n_bytes));
        },
        py::arg("label"), py::arg("json"), py::arg("file_n_bytes"));
  m.def("serialize_header", &serialize, py::arg("tensors"), py::arg("metadata"),
        "Header prefix (8-byte length + padded JSON) for (name, dtype, shape, begin, end).");
  m.def("dtype_n_bits", [](const std::string& d) { return dtype_bits(dtype_from(d)); });
  m.def("dtype_is_mergeable", [](const std::string& d) { return dtype_is_mergeable(dtype_from(d)); });
  m.def("build_info", &build_info);
  m.def("_set_enospc_fault_after", &set_enospc_fault_after, py::arg("n_bytes"),
        "Test hook: writes fail with ENOSPC after n_bytes more bytes (0 disables).");

  py::class_<PyPlan>(m, "Plan")
      .def(py::init<>())
      .def("add_file_source", &PyPlan::add_file_source, py::arg("path"),
           py::arg("expected_n_bytes") = UINT64_MAX)
      .def("add_memory_source", &PyPlan::add_memory_source, py::arg("label"), py::arg("address"),
           py::arg("n_bytes"))
      .def("add_file_sink", &PyPlan::add_file_sink, py::arg("path"), py::arg("n_bytes"),
           py::arg("header"))
      .def("add_memory_sink", &PyPlan::add_memory_sink, py::arg("label"), py::arg("address"),
           py::arg("n_bytes"))
      .def("add_job", &PyPlan::add_job, py::arg("name"), py::arg("op"), py::arg("n_elems"),
           py::arg("sink"), py::arg("out_offset"), py::arg("out_dtype"), py::arg("inputs"),
           py::arg("post_scale") = 1.0)
      .def("finish_sinks", &PyPlan::finish_sinks)
      .def("clear_jobs", &PyPlan::clear_jobs)
      .def_property_readonly("n_jobs", &PyPlan::n_jobs);

  m.def("dot_products", &py_dot_products, py::arg("plan"), py::arg("jobs"), py::arg("threads") = 0,
        py::arg("memory_budget") = 256ull << 20, py::arg("chunk_elems") = 0,
        "fp64 dot products <lhs, x_k> for jobs (name, n_elems, lhs, [x_k]), each input a "
        "(source, offset, dtype) of the plan's sources; returns one list per job.");
  m.def("run", &run, py::arg("plan"), py::arg("threads") = 0,
        py::arg("memory_budget") = 256ull << 20, py::arg("chunk_elems") = 0,
        py::arg("check_finite") = false, py::arg("kernel") = "auto",
        py::arg("progress") = py::none(),
        "Run every job of the plan; returns bytes read/written, chunking and timing.");
}
