// The only pybind11 file: exposes header parsing, plans and the engine as
// ladle._core, releases the GIL while the engine runs, and maps ladle::Error
// kinds onto the exception classes of ladle.errors.
#include <Python.h>
#include <map>
#include <optional>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "checksum.h"
#include "common.h"
#include "engine.h"
#include "method_della.h"
#include "method_sce.h"
#include "methods.h"
#include "plan_runner.h"
#include "py_common.h"
#include "safetensors.h"
#include "sum_table.h"

namespace py = pybind11;
using namespace ladle;

namespace ladle {
void bind_sum_table(py::module_& m);  // bindings_sum_table.cc
void bind_job_types(py::module_& m);  // bindings_jobs.cc
}  // namespace ladle

namespace {


KernelImpl kernel_from(const std::string& name) {
  if (name == "auto") return KernelImpl::kAuto;
  if (name == "scalar") return KernelImpl::kScalar;
  if (name == "avx2") return KernelImpl::kAvx2;
  if (name == "avx512") return KernelImpl::kAvx512;
  raise(ErrorKind::kValue, format("unknown kernel '%s' (auto, scalar, avx2, avx512)", name.c_str()));
}

// Hands memory freed by a large header parse back to the OS (glibc keeps it in
// its arenas otherwise, and the process's RSS would count it until exit).
void release_free_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

// A new instance of `type`, a tuple subclass without instance dict (a NamedTuple),
// holding `items` (references stolen): tuple.__new__(type, items) without the
// argument tuple, for the 10^6 TensorInfo of some checkpoints.
PyObject* new_tuple_of(PyTypeObject* type, std::initializer_list<PyObject*> items) {
  bool made = true;  // every item (a failed PyLong_From... is null)
  for (PyObject* item : items) made = made && item;
  PyObject* t = made ? type->tp_alloc(type, static_cast<Py_ssize_t>(items.size())) : nullptr;
  if (!t) {
    for (PyObject* item : items) Py_XDECREF(item);
    throw py::error_already_set();
  }
  Py_ssize_t i = 0;
  for (PyObject* item : items) PyTuple_SET_ITEM(t, i++, item);
  return t;
}

// `info_type` None: "tensors" is a list of (name, dtype, shape, begin, end) tuples.
// Otherwise a dict name -> info_type(name, dtype, shape, file, offset, n_bytes) with
// absolute offsets (TensorInfo, python/ladle/tensor_info.py), built here directly.
py::dict header_to_dict(const Header& h, const py::object& info_type = py::none(),
                        const py::object& file = py::none()) {
  py::dict out;
  out["header_n_bytes"] = h.header_n_bytes;
  out["data_start"] = h.data_start;
  out["file_n_bytes"] = h.file_n_bytes;
  py::dict metadata;
  for (const auto& [k, v] : h.metadata) metadata[py::str(k)] = py::str(v);
  out["metadata"] = h.has_metadata ? py::object(metadata) : py::object(py::none());
  // One str per dtype and one tuple per distinct shape: a header may hold 10^6
  // tensors (mostly of a few shapes), so per-tensor Python objects are kept to
  // what the caller must store.
  std::vector<py::str> dtype_names;
  for (int d = 0; d < static_cast<int>(DType::kCount); ++d)
    dtype_names.emplace_back(dtype_name(static_cast<DType>(d)));
  std::map<std::vector<uint64_t>, py::tuple> shapes;
  auto shape_of = [&](const TensorEntry& t) -> PyObject* {
    auto [it, added] = shapes.try_emplace(t.shape);
    if (added) {
      it->second = py::tuple(t.shape.size());
      for (size_t k = 0; k < t.shape.size(); ++k) it->second[k] = py::int_(t.shape[k]);
    }
    return it->second.inc_ref().ptr();
  };
  if (info_type.is_none()) {
    py::list tensors(h.tensors.size());
    for (size_t i = 0; i < h.tensors.size(); ++i) {
      const TensorEntry& t = h.tensors[i];
      tensors[i] = py::make_tuple(py::str(t.name), dtype_names[static_cast<int>(t.dtype)],
                                  py::reinterpret_steal<py::object>(shape_of(t)), t.begin,
                                  t.end);
    }
    out["tensors"] = tensors;
    return out;
  }
  LADLE_CHECK(PyType_Check(info_type.ptr()) &&
                  PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(info_type.ptr()),
                                   &PyTuple_Type),
              ErrorKind::kValue, "read_header: tensor_info must be a tuple subclass");
  auto* type = reinterpret_cast<PyTypeObject*>(info_type.ptr());
  py::dict tensors;
  for (const TensorEntry& t : h.tensors) {
    py::str name(t.name);
    PyObject* dtype = dtype_names[static_cast<int>(t.dtype)].inc_ref().ptr();
    auto info = py::reinterpret_steal<py::object>(new_tuple_of(
        type, {name.inc_ref().ptr(), dtype, shape_of(t), file.inc_ref().ptr(),
               PyLong_FromUnsignedLongLong(h.data_start + t.begin),
               PyLong_FromUnsignedLongLong(t.end - t.begin)}));
    if (PyDict_SetItem(tensors.ptr(), name.ptr(), info.ptr()) != 0)
      throw py::error_already_set();
  }
  out["tensors"] = tensors;
  return out;
}

JobOp job_op_from(const std::string& op) {
  if (op == "sum") return JobOp::kWeightedSum;
  if (op == "copy") return JobOp::kCopyIdentical;
  if (op == "max") return JobOp::kMax;
  if (op == "nearswap") return JobOp::kNearSwap;
  raise(ErrorKind::kValue, format("unknown job op '%s' (sum, copy, max, nearswap)", op.c_str()));
}

// The op of an engine job of `kind` (add_job takes only the engine's kinds).
JobOp job_op_of(const std::string& name, JobKind kind) {
  switch (kind) {
    case JobKind::kWeightedSum: return JobOp::kWeightedSum;
    case JobKind::kCopy: return JobOp::kCopyIdentical;
    case JobKind::kMax: return JobOp::kMax;
    case JobKind::kNearSwap: return JobOp::kNearSwap;
    default: break;
  }
  raise(ErrorKind::kValue,
        format("tensor '%s': add_job takes sum, copy, max or nearswap jobs, not %s (add_%s)",
               name.c_str(), job_kind_name(kind), job_kind_name(kind)));
}

// The UTF-8 bytes of a str (errors as Python's own, e.g. a TypeError).
std::string py_utf8(PyObject* s) {
  Py_ssize_t n = 0;
  const char* data = PyUnicode_AsUTF8AndSize(s, &n);
  if (!data) throw py::error_already_set();
  return std::string(data, static_cast<size_t>(n));
}

// A Python int (or any object with __index__, e.g. a numpy integer) in [0, most];
// an OverflowError or TypeError otherwise, as pybind11's own conversion raises.
uint64_t py_u64(PyObject* v, uint64_t most = UINT64_MAX) {
  py::object index;
  if (!PyLong_Check(v)) {
    index = py::reinterpret_steal<py::object>(PyNumber_Index(v));
    if (!index) throw py::error_already_set();
    v = index.ptr();
  }
  unsigned long long x = PyLong_AsUnsignedLongLong(v);
  if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw py::error_already_set();
  if (x > most) {
    PyErr_Format(PyExc_OverflowError, "%llu is out of range (at most %llu)", x,
                 static_cast<unsigned long long>(most));
    throw py::error_already_set();
  }
  return x;
}

// An input whose weight the job ignores (a base, a Gram or dot operand): weight 1,
// as these jobs always stored it.
JobInput unweighted(const JobInput& in) {
  return job_input(in.source, in.offset, in.dtype, 1.0);
}

// Python-facing wrapper that owns the plan's files and writers.
class PyPlan {
 public:
  uint32_t add_file_source(const py::object& path_arg, uint64_t expected_n_bytes) {
    std::string path = fs_path(path_arg);
    auto file = std::make_shared<MappedFile>(path, expected_n_bytes);
    plan_.sources.push_back({path, file->data(), file->n_bytes(), file});
    return static_cast<uint32_t>(plan_.sources.size() - 1);
  }
  uint32_t add_memory_source(const std::string& label, uintptr_t address, uint64_t n_bytes) {
    plan_.sources.push_back({label, reinterpret_cast<const uint8_t*>(address), n_bytes, nullptr});
    return static_cast<uint32_t>(plan_.sources.size() - 1);
  }
  uint32_t add_file_sink(const py::object& path_arg, uint64_t n_bytes, const py::bytes& header) {
    std::string path = fs_path(path_arg);
    auto writer = std::make_shared<ShardWriter>(path, n_bytes, std::string(header));
    plan_.sinks.push_back({path, nullptr, n_bytes, writer});
    return static_cast<uint32_t>(plan_.sinks.size() - 1);
  }
  uint32_t add_memory_sink(const std::string& label, uintptr_t address, uint64_t n_bytes) {
    plan_.sinks.push_back({label, reinterpret_cast<uint8_t*>(address), n_bytes, nullptr});
    return static_cast<uint32_t>(plan_.sinks.size() - 1);
  }
  void add_job(const std::string& name, JobKind kind, uint64_t n_elems, uint32_t sink,
               uint64_t out_offset, const std::string& out_dtype,
               const std::vector<JobInput>& inputs, double post_scale, double threshold) {
    Job job;
    job.name = name;
    job.op = job_op_of(name, kind);
    job.n_elems = n_elems;
    job.sink = sink;
    job.out_offset = out_offset;
    job.out_dtype = dtype_from(out_dtype);
    job.post_scale = static_cast<float>(post_scale);
    job.threshold = static_cast<float>(threshold);
    job.inputs = inputs;
    plan_.jobs.push_back(std::move(job));
  }
  // Marks input `k` of the last job added as block-scaled (see BlockScale in plan.h);
  // validate_plan checks the rest when the plan runs.
  void scale_input(size_t k, uint32_t source, uint64_t offset, uint64_t block_rows,
                   uint64_t block_cols, uint64_t n_cols, const std::string& dtype) {
    LADLE_CHECK(!plan_.jobs.empty() && k < plan_.jobs.back().inputs.size(), ErrorKind::kValue,
                "scale_input: the last job has no input %zu", k);
    LADLE_CHECK(block_rows > 0 && block_cols > 0 && n_cols > 0, ErrorKind::kValue,
                "tensor '%s': block scales need positive block and row sizes",
                plan_.jobs.back().name.c_str());
    plan_.jobs.back().inputs[k].scale = {source,   offset, block_rows,
                                         block_cols, n_cols, dtype_from(dtype)};
  }
  // Marks the last job added as writing F8_E4M3 with fresh block scales into the
  // tensor of `dtype` (F32, BF16, F16) at `offset` of `sink` (see OutScale in plan.h).
  void scale_output(uint32_t sink, uint64_t offset, uint64_t block_rows, uint64_t block_cols,
                    uint64_t n_cols, const std::string& dtype) {
    LADLE_CHECK(!plan_.jobs.empty(), ErrorKind::kValue, "scale_output: no job added yet");
    LADLE_CHECK(block_rows > 0 && block_cols > 0 && n_cols > 0, ErrorKind::kValue,
                "tensor '%s': block scales need positive block and row sizes",
                plan_.jobs.back().name.c_str());
    plan_.jobs.back().out_scale = {sink,   offset, block_rows,
                                   block_cols, n_cols, dtype_from(dtype)};
  }
  // add_job for a whole sequence of jobs, each a tuple (name, op, n_elems, sink,
  // out_offset, out_dtype, inputs) with inputs as add_job's and post_scale 1. The
  // tuples are read with the CPython API: per-call argument conversion, not the
  // engine, dominated plans of 10^6 tiny tensors.
  void add_jobs(const py::sequence& jobs) {
    plan_.jobs.reserve(plan_.jobs.size() + jobs.size());
    for (py::handle args : jobs) {
      PyObject* t = args.ptr();
      LADLE_CHECK(PyTuple_Check(t) && PyTuple_GET_SIZE(t) == 7, ErrorKind::kValue,
                  "add_jobs: each job must be a tuple (name, op, n_elems, sink, out_offset, "
                  "out_dtype, inputs)");
      Job job;
      job.name = py_utf8(PyTuple_GET_ITEM(t, 0));
      job.op = job_op_from(py_utf8(PyTuple_GET_ITEM(t, 1)));
      LADLE_CHECK(job.op != JobOp::kNearSwap, ErrorKind::kValue,
                  "tensor '%s': add_jobs has no threshold: add a nearswap job with add_job",
                  job.name.c_str());
      job.n_elems = py_u64(PyTuple_GET_ITEM(t, 2));
      job.sink = static_cast<uint32_t>(py_u64(PyTuple_GET_ITEM(t, 3), UINT32_MAX));
      job.out_offset = py_u64(PyTuple_GET_ITEM(t, 4));
      job.out_dtype = dtype_from(py_utf8(PyTuple_GET_ITEM(t, 5)));
      for (py::handle in : py::reinterpret_borrow<py::sequence>(PyTuple_GET_ITEM(t, 6))) {
        PyObject* i = in.ptr();
        LADLE_CHECK(PyTuple_Check(i) && PyTuple_GET_SIZE(i) == 4, ErrorKind::kValue,
                    "tensor '%s': each input must be a tuple (source, offset, dtype, weight)",
                    job.name.c_str());
        double weight = PyFloat_AsDouble(PyTuple_GET_ITEM(i, 3));
        if (weight == -1.0 && PyErr_Occurred()) throw py::error_already_set();
        job.inputs.push_back(job_input(static_cast<uint32_t>(py_u64(PyTuple_GET_ITEM(i, 0),
                                                                    UINT32_MAX)),
                                       py_u64(PyTuple_GET_ITEM(i, 1)),
                                       dtype_from(py_utf8(PyTuple_GET_ITEM(i, 2))), weight));
      }
      plan_.jobs.push_back(std::move(job));
    }
  }
  // The jobs of one shard of a SumTable (python/ladle/sum_plan.py).
  void add_sum_table_jobs(const SumTable& table, size_t shard,
                          const std::vector<uint32_t>& sources, uint32_t sink,
                          uint64_t header_n_bytes) {
    table.add_jobs(plan_, shard, sources, sink, header_n_bytes);
  }
  // fsyncs and closes every shard; the files are complete after this.
  void finish_sinks() {
    for (Sink& s : plan_.sinks)
      if (s.writer) s.writer->finish();
  }
  // fsyncs and closes one shard (runs of a plan may go shard by shard); returns the
  // file's CRC-32C when the writer knows it from its writes (else None: read it).
  py::object finish_sink(uint32_t index) {
    LADLE_CHECK(index < plan_.sinks.size(), ErrorKind::kValue, "sink index %u out of range",
                index);
    const std::shared_ptr<ShardWriter>& writer = plan_.sinks[index].writer;
    if (!writer) return py::none();
    {
      py::gil_scoped_release release;
      writer->finish();
    }
    uint32_t crc = 0;
    if (!writer->written_crc32c(&crc)) return py::none();
    return py::int_(crc);
  }
  // The jobs of the methods, each kind in its own list of the plan (plan.h).
  void add_task(const std::string& name, uint64_t n_elems, uint32_t sink, uint64_t out_offset,
                const std::string& out_dtype, const JobInput& base,
                const std::vector<TaskModel>& models, Sparsify sparsify, Consensus consensus,
                bool normalize, Rescale rescale, double lambda, uint64_t seed) {
    TaskJob job;
    job.name = name;
    job.n_elems = n_elems;
    job.sink = sink;
    job.out_offset = out_offset;
    job.out_dtype = dtype_from(out_dtype);
    job.base = unweighted(base);
    job.models = models;
    job.sparsify = sparsify;
    job.consensus = consensus;
    job.normalize = normalize;
    job.rescale = rescale;
    job.lambda = static_cast<float>(lambda);
    job.seed = seed;
    job.tensor_key = tensor_key(name);
    plan_.tasks.push_back(std::move(job));
  }
  void add_gram(const std::string& name, uint64_t n_elems, const std::vector<JobInput>& inputs,
                int32_t base) {
    GramJob job;
    job.name = name;
    job.n_elems = n_elems;
    job.base = base;
    for (const JobInput& in : inputs) job.inputs.push_back(unweighted(in));
    plan_.grams.push_back(std::move(job));
  }
  void add_della(const std::string& name, uint64_t n_elems, uint64_t group_len,
                 uint64_t group_stride, uint32_t sink, uint64_t out_offset,
                 const std::string& out_dtype, const JobInput& base,
                 const std::vector<DellaModel>& models, bool elect_sign, bool normalize,
                 DellaRescale rescale, double lambda, uint64_t seed) {
    DellaJob job;
    job.name = name;
    job.n_elems = n_elems;
    job.group_len = group_len;
    job.group_stride = group_stride;
    job.sink = sink;
    job.out_offset = out_offset;
    job.out_dtype = dtype_from(out_dtype);
    job.base = unweighted(base);
    job.models = models;
    job.elect_sign = elect_sign;
    job.normalize = normalize;
    job.rescale = rescale;
    job.lambda = static_cast<float>(lambda);
    job.seed = seed;
    job.tensor_key = tensor_key(name);
    plan_.dellas.push_back(std::move(job));
  }
  void add_sce(const std::string& name, uint64_t n_elems, uint32_t sink, uint64_t out_offset,
               const std::string& out_dtype, const JobInput& base,
               const std::vector<JobInput>& models, double select_topk) {
    SceJob job;
    job.name = name;
    job.n_elems = n_elems;
    job.sink = sink;
    job.out_offset = out_offset;
    job.out_dtype = dtype_from(out_dtype);
    job.base = unweighted(base);
    for (const JobInput& in : models) job.models.push_back(unweighted(in));
    job.select_topk = select_topk;
    plan_.sces.push_back(std::move(job));
  }
  void add_dot(const std::string& name, uint64_t n_elems, const JobInput& lhs,
               const std::vector<JobInput>& inputs) {
    DotJob job;
    job.name = name;
    job.n_elems = n_elems;
    job.lhs = unweighted(lhs);
    for (const JobInput& in : inputs) job.inputs.push_back(unweighted(in));
    plan_.dots.push_back(std::move(job));
  }
  void clear_jobs(const std::optional<std::vector<JobKind>>& kinds) {
    ladle::clear_jobs(&plan_, kind_set(kinds));
  }
  size_t count(JobKind kind) const { return count_jobs(plan_, kind); }
  // Drops the resident pages (whole pages only) of a file source's byte range once
  // the caller's runs are done with it: runs of jobs under a page each (per-row
  // statistics) release nothing themselves.
  void release_source(uint32_t source, uint64_t offset, uint64_t n_bytes) {
    LADLE_CHECK(source < plan_.sources.size() && n_bytes <= UINT64_MAX - offset,
                ErrorKind::kValue, "release_source: source %u, range out of bounds", source);
    if (plan_.sources[source].file) plan_.sources[source].file->release(offset, n_bytes);
  }
  size_t n_jobs() const {
    return plan_.jobs.size() + plan_.tasks.size() + plan_.grams.size() + plan_.dellas.size() +
           plan_.sces.size() + plan_.dots.size();
  }
  const Plan& plan() const { return plan_; }

 private:
  Plan plan_;
};

EngineOptions engine_options(int threads, uint64_t memory_budget, uint64_t chunk_elems,
                             bool check_finite, const std::string& kernel) {
  EngineOptions options;
  options.threads = threads;
  options.memory_budget = memory_budget;
  options.chunk_elems = chunk_elems;
  options.check_finite = check_finite;
  options.kernel = kernel_from(kernel);
  return options;
}

// The plan's jobs of `kinds` (None: all) through run_jobs (plan_runner.h): the run's
// statistics, with "grams" / "dots" (one list per job) when those kinds ran.
py::dict run(const PyPlan& plan, const std::optional<std::vector<JobKind>>& kinds, int threads,
             uint64_t memory_budget, uint64_t chunk_elems, bool check_finite,
             const std::string& kernel, py::object progress) {
  EngineOptions options = engine_options(threads, memory_budget, chunk_elems, check_finite, kernel);
  ProgressFn on_progress = python_progress(progress);
  PlanResults results;
  {
    py::gil_scoped_release release;
    results = run_jobs(plan.plan(), kind_set(kinds), options, on_progress);
  }
  return results_to_dict(results);
}

// A capsule for ladle._cuda holding `ptr`, a member of `owner`: the capsule keeps a
// reference to `owner` (its context) so the object outlives every use through it.
py::object owner_capsule(py::object owner, void* ptr, const char* name) {
  PyObject* capsule = PyCapsule_New(ptr, name, [](PyObject* c) {
    Py_XDECREF(static_cast<PyObject*>(PyCapsule_GetContext(c)));
  });
  if (!capsule) throw py::error_already_set();
  PyCapsule_SetContext(capsule, owner.inc_ref().ptr());
  return py::reinterpret_steal<py::object>(capsule);
}

// tensors: (name, dtype, shape, begin, end) tuples, read with the CPython API as
// add_jobs reads its jobs (a header may hold 10^6 of them).
py::bytes serialize(const py::sequence& tensors,
                    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<TensorEntry> entries;
  entries.reserve(tensors.size());
  for (py::handle item : tensors) {
    PyObject* e = item.ptr();
    LADLE_CHECK(PyTuple_Check(e) && PyTuple_GET_SIZE(e) == 5, ErrorKind::kValue,
                "serialize_header: each tensor must be a tuple (name, dtype, shape, begin, end)");
    TensorEntry t;
    t.name = py_utf8(PyTuple_GET_ITEM(e, 0));
    t.dtype = dtype_from(py_utf8(PyTuple_GET_ITEM(e, 1)));
    for (py::handle d : py::reinterpret_borrow<py::sequence>(PyTuple_GET_ITEM(e, 2)))
      t.shape.push_back(py_u64(d.ptr()));
    t.begin = py_u64(PyTuple_GET_ITEM(e, 3));
    t.end = py_u64(PyTuple_GET_ITEM(e, 4));
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
  info["method_kernels"] = select_method_kernels(KernelImpl::kAuto).name;
  info["avx512_cpu"] = avx512_method_kernels() != nullptr && cpu_supports_avx512();
#ifdef LADLE_HAVE_CUDA
  info["cuda_compiled"] = true;  // ladle._cuda was built alongside
#else
  info["cuda_compiled"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ladle's C++ core: safetensors parsing, streaming merge engine";

  register_error_translator();
  bind_sum_table(m);
  bind_job_types(m);

  m.def("read_header",
        [](const py::object& path, const py::object& tensor_info, const py::object& file) {
          py::dict out;
          {
            Header header = read_header(fs_path(path));
            out = header_to_dict(header, tensor_info, file);
          }
          release_free_heap();  // the parse of a 10^6-tensor header freed ~1 GB
          return out;
        },
        py::arg("path"), py::arg("tensor_info") = py::none(), py::arg("file") = py::none(),
        "Read and validate a safetensors header (no tensor data is read); with "
        "tensor_info, 'tensors' maps names to tensor_info(name, dtype, shape, file, "
        "offset, n_bytes).");
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
  m.def("supports", [](JobKind kind) { return supports(kind); }, py::arg("kind"),
        "Whether the CPU backend runs jobs of `kind` (it runs every kind).");
  m.def("file_crc32c", [](const py::object& path, uint32_t crc, uint64_t offset, uint64_t n_bytes) {
          std::string p = fs_path(path);
          py::gil_scoped_release release;
          return file_crc32c(p, crc, offset, n_bytes);
        }, py::arg("path"), py::arg("crc") = 0, py::arg("offset") = 0,
        py::arg("n_bytes") = UINT64_MAX,
        "CRC-32C of a file, or of n_bytes from offset continuing crc (SSE4.2 when available).");
  m.attr("FILE_CHECKSUM_KEY") = kFileChecksumKey;
  m.attr("FILE_CHECKSUM_PLACEHOLDER") = kFileChecksumPlaceholder;
  m.def("crc32c_combine", &crc32c_combine, py::arg("crc1"), py::arg("crc2"), py::arg("len2"),
        "CRC-32C of A followed by B from crc32c(A), crc32c(B) and len(B).");
  m.def("crc32c", [](const py::bytes& data, uint32_t crc) {
          std::string s(data);
          return crc32c(crc, s.data(), s.size());
        }, py::arg("data"), py::arg("crc") = 0);
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
           py::arg("post_scale") = 1.0, py::arg("threshold") = 0.0,
           "An engine job (op: JobKind sum, copy, max or nearswap) of weighted inputs.")
      .def("scale_input", &PyPlan::scale_input, py::arg("k"), py::arg("source"),
           py::arg("offset"), py::arg("block_rows"), py::arg("block_cols"), py::arg("n_cols"),
           py::arg("dtype") = "F32")
      .def("scale_output", &PyPlan::scale_output, py::arg("sink"), py::arg("offset"),
           py::arg("block_rows"), py::arg("block_cols"), py::arg("n_cols"),
           py::arg("dtype") = "F32")
      .def("add_jobs", &PyPlan::add_jobs, py::arg("jobs"),
           "add_job for each (name, op, n_elems, sink, out_offset, out_dtype, inputs) tuple, "
           "op a name ('sum', 'copy', 'max') and each input a (source, offset, dtype, weight) "
           "tuple: read with the CPython API, the bulk path of 10^6-tensor plans.")
      .def("add_sum_table_jobs", &PyPlan::add_sum_table_jobs, py::arg("table"),
           py::arg("shard"), py::arg("sources"), py::arg("sink"), py::arg("header_n_bytes"))
      .def("finish_sinks", &PyPlan::finish_sinks)
      .def("finish_sink", &PyPlan::finish_sink, py::arg("index"))
      .def("release_source", &PyPlan::release_source, py::arg("source"), py::arg("offset"),
           py::arg("n_bytes"))
      .def("_capsule",
           [](py::object self) {
             const Plan* plan = &self.cast<const PyPlan&>().plan();
             return owner_capsule(self, const_cast<Plan*>(plan), kPlanCapsuleName);
           },
           "The plan (jobs of every kind) for ladle._cuda.run; the capsule keeps it alive.")
      .def("add_task", &PyPlan::add_task, py::arg("name"), py::arg("n_elems"), py::arg("sink"),
           py::arg("out_offset"), py::arg("out_dtype"), py::arg("base"), py::arg("models"),
           py::arg("sparsify"), py::arg("consensus"), py::arg("normalize"), py::arg("rescale"),
           py::arg("lambda_"), py::arg("seed"),
           "A task-vector job (task arithmetic, TIES, DARE, breadcrumbs) into a sink.")
      .def("add_gram", &PyPlan::add_gram, py::arg("name"), py::arg("n_elems"), py::arg("inputs"),
           py::arg("base"),
           "An fp64 Gram matrix of the inputs (base >= 0: of the others minus that one).")
      .def("add_della", &PyPlan::add_della, py::arg("name"), py::arg("n_elems"),
           py::arg("group_len"), py::arg("group_stride"), py::arg("sink"), py::arg("out_offset"),
           py::arg("out_dtype"), py::arg("base"), py::arg("models"), py::arg("elect_sign"),
           py::arg("normalize"), py::arg("rescale"), py::arg("lambda_"), py::arg("seed"),
           "A DELLA job (della, della_linear: MAGPRUNE, rescale, mix) into a sink.")
      .def("add_sce", &PyPlan::add_sce, py::arg("name"), py::arg("n_elems"), py::arg("sink"),
           py::arg("out_offset"), py::arg("out_dtype"), py::arg("base"), py::arg("models"),
           py::arg("select_topk"),
           "An SCE job (select by variance, calculate weights, erase by sign) into a sink.")
      .def("add_dot", &PyPlan::add_dot, py::arg("name"), py::arg("n_elems"), py::arg("lhs"),
           py::arg("inputs"), "fp64 dot products <lhs, x_k> for each input x_k.")
      .def("clear_jobs", &PyPlan::clear_jobs, py::arg("kinds") = py::none(),
           "Drop the jobs of `kinds` (default: every kind); sources and sinks stay.")
      .def("count", &PyPlan::count, py::arg("kind"), "How many jobs of `kind` the plan holds.")
      .def_property_readonly("n_jobs", &PyPlan::n_jobs);

  m.def("tensor_key", &tensor_key, py::arg("name"), "FNV-1a 64 of a tensor name (DARE's key).");
  m.def("dare_u24", &dare_u24, py::arg("seed"), py::arg("key"), py::arg("model"),
        py::arg("elem"), "DARE's counter-based draw in [0, 2^24) for one element.");

  m.def("run", &run, py::arg("plan"), py::arg("kinds") = py::none(), py::arg("threads") = 0,
        py::arg("memory_budget") = 256ull << 20, py::arg("chunk_elems") = 0,
        py::arg("check_finite") = false, py::arg("kernel") = "auto",
        py::arg("progress") = py::none(),
        "Run the plan's jobs of `kinds` (default: every kind); returns bytes read/written, "
        "chunking and timing, and 'grams' / 'dots' (one list per job) when those kinds ran.");
}
