// pybind11 glue shared by the extension modules (_core, _cuda): the mapping
// of ladle::ErrorKind onto ladle.errors, the progress callback that lets Ctrl-C
// stop a run, and the conversion of run statistics.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "dtype.h"
#include "engine.h"
#include "plan_runner.h"

namespace ladle {

inline DType dtype_from(const std::string& name) {
  DType d;
  LADLE_CHECK(parse_dtype(name, &d), ErrorKind::kValue, "unknown dtype '%s'", name.c_str());
  return d;
}

// A file-system path from Python (str, bytes or os.PathLike) as the bytes the
// OS uses: os.fsencode, so names that are not UTF-8 (surrogate-escaped by
// Python) reach open() unchanged instead of failing the argument conversion.
inline std::string fs_path(const pybind11::handle& path) {
  namespace py = pybind11;
  PyObject* encoded = nullptr;
  if (!PyUnicode_FSConverter(path.ptr(), &encoded)) throw py::error_already_set();
  py::bytes bytes = py::reinterpret_steal<py::bytes>(encoded);
  return std::string(bytes);
}

// An error message (which may quote non-UTF-8 file names) as a Python str,
// undecodable bytes surrogate-escaped as os.fsdecode does.
inline pybind11::str message_str(const char* message) {
  namespace py = pybind11;
  PyObject* s = PyUnicode_DecodeUTF8(message, static_cast<Py_ssize_t>(std::strlen(message)),
                                     "surrogateescape");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

inline void register_error_translator() {
  namespace py = pybind11;
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
      py::str message = message_str(e.what());
      py::object exc = e.kind() == ErrorKind::kIO && e.os_errno() != 0
                           ? cls(e.os_errno(), message)
                           : cls(message);
      if (e.line() > 0) {
        std::string file = e.file();
        exc.attr("cpp_location") =
            file.substr(file.find_last_of('/') + 1) + ":" + std::to_string(e.line());
      }
      PyErr_SetObject(cls.ptr(), exc.ptr());
    }
  });
}

// Wraps the user's progress callback (or None). Called on the thread that runs
// the engine, with the GIL re-acquired: Ctrl-C and the callback stop the run.
inline ProgressFn python_progress(const pybind11::object& progress) {
  namespace py = pybind11;
  return [progress](uint64_t done, uint64_t total) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (progress.is_none()) return true;
    py::object keep = progress(done, total);
    return keep.is_none() || keep.cast<bool>();
  };
}

inline pybind11::dict stats_to_dict(const RunStats& stats) {
  pybind11::dict out;
  out["bytes_read"] = stats.bytes_read;
  out["bytes_written"] = stats.bytes_written;
  out["n_chunks"] = stats.n_chunks;
  out["chunk_elems"] = stats.chunk_elems;
  out["threads"] = stats.threads;
  out["seconds"] = stats.seconds;
  out["kernel"] = stats.kernel;
  out["rng_draws"] = stats.rng_draws;
  out["ranks_sampled"] = stats.ranks_sampled;
  out["ranks_histogrammed"] = stats.ranks_histogrammed;
  out["fp8_two_pass"] = stats.fp8_two_pass;
  out["host_sums"] = stats.host_sums;
  return out;
}

// The kinds a run or clear_jobs names (bound as ladle._core.JobKind); None: every kind.
inline KindSet kind_set(const std::optional<std::vector<JobKind>>& kinds) {
  if (!kinds) return KindSet::all();
  KindSet set;
  for (JobKind k : *kinds) set.add(k);
  return set;
}

// A run's statistics, with "grams" / "dots" (one list per job) when those kinds ran.
inline pybind11::dict results_to_dict(const PlanResults& results) {
  pybind11::dict out = stats_to_dict(results.stats);
  if (results.ran_grams) out["grams"] = pybind11::cast(results.grams);
  if (results.ran_dots) out["dots"] = pybind11::cast(results.dots);
  return out;
}

}  // namespace ladle
