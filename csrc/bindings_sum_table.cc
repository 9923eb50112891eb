// ladle._core.sum_table and ladle._core.SumTable: reads the tensor tables of N opened
// checkpoints (name -> TensorInfo dicts) into a SumTable with the CPython API, no
// Python object made per tensor. Part of the _core module (bindings.cc calls
// bind_sum_table); the table itself is plain C++ (sum_table.h).
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unordered_map>

#include "py_common.h"
#include "sum_table.h"

namespace py = pybind11;

namespace ladle {
namespace {

// TensorInfo's fields (python/ladle/tensor_info.py): name, dtype, shape, file, offset, n_bytes.
constexpr Py_ssize_t kInfoFields = 6;

// Python objects seen again and again (a header shares one str per dtype, one tuple
// per shape and one Path per file) mapped to what they stand for, keyed by identity:
// the dict lookups and conversions run once per distinct object.
template <typename T>
using ByObject = std::unordered_map<PyObject*, T>;

uint64_t to_u64(PyObject* v) {
  unsigned long long x = PyLong_AsUnsignedLongLong(v);
  if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw py::error_already_set();
  return x;
}

// The table, or None when the inputs do not hold the same tensors with one dtype (in
// every input) that `out_dtypes` maps and the same shape, or hold anything this reader
// does not know: the caller then plans the merge on its general path, which also names
// what differs.
py::object read_sum_table(const py::list& tables, const std::vector<double>& weights,
                          const py::dict& out_dtypes, const py::dict& file_ids) {
  const size_t n_inputs = tables.size();
  if (n_inputs == 0 || weights.size() != n_inputs) return py::none();
  std::vector<PyObject*> dicts;
  for (py::handle t : tables) {
    if (!PyDict_Check(t.ptr())) return py::none();
    dicts.push_back(t.ptr());
  }
  const Py_ssize_t n_tensors = PyDict_Size(dicts[0]);
  if (n_tensors == 0) return py::none();
  for (PyObject* d : dicts)
    if (PyDict_Size(d) != n_tensors) return py::none();

  auto table = std::make_unique<SumTable>(weights);
  ByObject<uint32_t> shape_ids, file_ids_seen;
  ByObject<std::pair<DType, DType>> dtypes;  // input dtype str -> (in, out)
  std::vector<SumInput> inputs(n_inputs);
  Py_ssize_t pos = 0;
  PyObject *name = nullptr, *first = nullptr;
  while (PyDict_Next(dicts[0], &pos, &name, &first)) {
    PyObject *dtype = nullptr, *shape = nullptr;
    for (size_t k = 0; k < n_inputs; ++k) {
      PyObject* info = k == 0 ? first : PyDict_GetItemWithError(dicts[k], name);
      if (!info) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return py::none();  // a name missing from input k
      }
      if (!PyTuple_Check(info) || PyTuple_GET_SIZE(info) != kInfoFields) return py::none();
      PyObject* d = PyTuple_GET_ITEM(info, 1);
      PyObject* s = PyTuple_GET_ITEM(info, 2);
      if (k == 0) {
        dtype = d, shape = s;
      } else {
        int same_dtype = d == dtype ? 1 : PyObject_RichCompareBool(d, dtype, Py_EQ);
        int same_shape = s == shape ? 1 : PyObject_RichCompareBool(s, shape, Py_EQ);
        if (same_dtype < 0 || same_shape < 0) throw py::error_already_set();
        if (!same_dtype || !same_shape) return py::none();
      }
      PyObject* file = PyTuple_GET_ITEM(info, 3);
      auto f = file_ids_seen.find(file);
      if (f == file_ids_seen.end()) {
        PyObject* id = PyDict_GetItemWithError(file_ids.ptr(), file);
        if (!id) {
          if (PyErr_Occurred()) throw py::error_already_set();
          return py::none();
        }
        f = file_ids_seen.emplace(file, static_cast<uint32_t>(to_u64(id))).first;
      }
      inputs[k] = {f->second, to_u64(PyTuple_GET_ITEM(info, 4))};
    }
    auto d = dtypes.find(dtype);
    if (d == dtypes.end()) {
      PyObject* out = PyDict_GetItemWithError(out_dtypes.ptr(), dtype);
      if (!out) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return py::none();  // not a float dtype (the int policy applies) or unknown
      }
      d = dtypes.emplace(dtype, std::make_pair(dtype_from(py::cast<std::string>(dtype)),
                                               dtype_from(py::cast<std::string>(out)))).first;
    }
    auto s = shape_ids.find(shape);
    if (s == shape_ids.end()) {
      if (!PyTuple_Check(shape)) return py::none();
      std::vector<uint64_t> dims;
      for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(shape); ++i)
        dims.push_back(to_u64(PyTuple_GET_ITEM(shape, i)));
      s = shape_ids.emplace(shape, table->add_shape(std::move(dims))).first;
    }
    SumTensor t;
    Py_ssize_t n_name = 0;
    const char* utf8 = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &n_name) : nullptr;
    if (!utf8) {  // e.g. a lone surrogate in a name read from a .pt file
      PyErr_Clear();
      return py::none();
    }
    t.name.assign(utf8, static_cast<size_t>(n_name));
    t.in_dtype = d->second.first;
    t.out_dtype = d->second.second;
    t.shape = s->second;
    t.n_elems = 1;
    for (uint64_t dim : table->shapes()[t.shape]) t.n_elems *= dim;  // headers are validated
    table->add_tensor(std::move(t), inputs.data());
  }
  return py::cast(std::move(table));
}

// value(tensor) for every tensor of `table`, in model order.
template <typename Value>
py::list per_tensor(const SumTable& table, Value value) {
  py::list out(table.tensors().size());
  for (size_t i = 0; i < table.tensors().size(); ++i) out[i] = value(table.tensors()[i]);
  return out;
}

}  // namespace

void bind_sum_table(py::module_& m) {
  py::class_<SumTable>(m, "SumTable",
                       "Same-layout weighted sums (csrc/sum_table.h); made by sum_table().")
      .def("__len__", [](const SumTable& t) { return t.tensors().size(); })
      .def("tensor",
           [](const SumTable& t, size_t i) {
             LADLE_CHECK(i < t.tensors().size(), ErrorKind::kValue, "no tensor %zu", i);
             const SumTensor& s = t.tensors()[i];
             py::tuple shape(t.shapes()[s.shape].size());
             for (size_t k = 0; k < t.shapes()[s.shape].size(); ++k)
               shape[k] = py::int_(t.shapes()[s.shape][k]);
             return py::make_tuple(py::str(s.name), dtype_name(s.out_dtype), shape,
                                   s.out_n_bytes(), s.n_elems, s.shard, s.offset);
           },
           py::arg("index"),
           "(name, out dtype, shape, out n_bytes, n_elems, shard, offset) of tensor `index`.")
      .def("names",
           [](const SumTable& t) {
             return per_tensor(t, [](const SumTensor& s) { return py::str(s.name); });
           },
           "Every tensor's name, in model order.")
      .def("shards",
           [](const SumTable& t) {
             return per_tensor(t, [](const SumTensor& s) { return py::int_(s.shard); });
           },
           "Every tensor's shard index, in model order.")
      .def("layout", &SumTable::layout, py::arg("max_shard_bytes"), py::arg("single_file"),
           py::arg("header_split_bytes"))
      .def("shard_header",
           [](const SumTable& t, size_t shard,
              const std::vector<std::pair<std::string, std::string>>& metadata) {
             return py::bytes(t.shard_header(shard, metadata));
           },
           py::arg("shard"), py::arg("metadata"))
      .def("shard_data_n_bytes", &SumTable::shard_data_n_bytes, py::arg("shard"))
      .def("shard_size", [](const SumTable& t, size_t shard) {
             return t.shard_tensors(shard).size();
           }, py::arg("shard"))
      .def("shard_tensor",
           [](const SumTable& t, size_t shard, size_t j) {
             const std::vector<uint32_t>& ids = t.shard_tensors(shard);
             LADLE_CHECK(j < ids.size(), ErrorKind::kValue, "shard %zu has no tensor %zu",
                         shard, j);
             return ids[j];
           },
           py::arg("shard"), py::arg("position"),
           "Tensor index of the tensor at `position` (file order) of shard `shard`.")
      .def_property_readonly("bytes_read", &SumTable::bytes_read);
  m.def("sum_table", &read_sum_table, py::arg("tables"), py::arg("weights"),
        py::arg("out_dtypes"), py::arg("file_ids"),
        "A SumTable of checkpoints' tensor tables, or None when they differ in names, "
        "dtypes or shapes or hold a dtype out_dtypes does not map.");
}

}  // namespace ladle
