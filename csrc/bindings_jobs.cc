// The typed pieces of a Plan's jobs as ladle._core sees them: the enums of the job
// kinds and of the methods' settings, and the small value classes Input, TaskModel
// and DellaModel that the Plan's add_* methods take instead of positional tuples.
// Values are checked once, here (an unknown dtype names itself), and stored as the
// C++ structs the runners read (plan.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "plan.h"
#include "py_common.h"

namespace py = pybind11;

namespace ladle {

void bind_job_types(py::module_& m) {
  py::enum_<JobKind>(m, "JobKind", "The kinds of job a Plan holds (one list each).")
      .value("sum", JobKind::kWeightedSum)
      .value("copy", JobKind::kCopy)
      .value("max", JobKind::kMax)
      .value("nearswap", JobKind::kNearSwap)
      .value("task", JobKind::kTaskProgram)
      .value("gram", JobKind::kGram)
      .value("dot", JobKind::kDot)
      .value("della", JobKind::kDella)
      .value("sce", JobKind::kSce);
  py::enum_<Sparsify>(m, "Sparsify", "How a task job keeps deltas (methods.h).")
      .value("none", Sparsify::kNone)
      .value("magnitude", Sparsify::kMagnitude)
      .value("random", Sparsify::kRandom)
      .value("outliers", Sparsify::kOutliers);
  py::enum_<Consensus>(m, "Consensus", "A task job's sign election.")
      .value("none", Consensus::kNone)
      .value("sum", Consensus::kSum)
      .value("count", Consensus::kCount);
  py::enum_<Rescale>(m, "Rescale", "What a task job's kept deltas are multiplied by.")
      .value("none", Rescale::kNone)
      .value("density", Rescale::kDensity)
      .value("l1", Rescale::kL1);
  py::enum_<DellaRescale>(m, "DellaRescale", "What a DELLA job's kept deltas are multiplied by.")
      .value("none", DellaRescale::kNone)
      .value("l1", DellaRescale::kL1)
      .value("density", DellaRescale::kProbability);

  py::class_<JobInput>(m, "Input", "One input of a job: a tensor of a plan source.")
      .def(py::init([](uint32_t source, uint64_t offset, const std::string& dtype,
                       double weight) { return job_input(source, offset, dtype_from(dtype), weight); }),
           py::arg("source"), py::arg("offset"), py::arg("dtype"), py::arg("weight") = 1.0,
           "source index, byte offset of the first element, dtype name, weight (rounded to "
           "fp32 once; kept in fp64 for fp64 jobs).")
      .def_readonly("source", &JobInput::source)
      .def_readonly("offset", &JobInput::offset)
      .def_property_readonly("dtype", [](const JobInput& in) { return dtype_name(in.dtype); })
      .def_readonly("weight", &JobInput::weight_f64)
      .def("__repr__", [](const JobInput& in) {
        return format("Input(%u, %llu, '%s', %.17g)", in.source, (unsigned long long)in.offset,
                      dtype_name(in.dtype), in.weight_f64);
      });
  py::class_<TaskModel>(m, "TaskModel", "A model of a task job: its input and what it keeps.")
      .def(py::init([](const JobInput& input, double density, uint64_t rank_lo,
                       uint64_t rank_hi) {
             return TaskModel{input, static_cast<float>(density), rank_lo, rank_hi};
           }),
           py::arg("input"), py::arg("density") = 1.0, py::arg("rank_lo") = 0,
           py::arg("rank_hi") = 0,
           "input (its weight is the model's w_k), keep probability (random), kept "
           "descending-|delta| rank range [rank_lo, rank_hi) (magnitude, outliers).")
      .def_readonly("input", &TaskModel::input)
      .def_readonly("density", &TaskModel::density)
      .def_readonly("rank_lo", &TaskModel::rank_lo)
      .def_readonly("rank_hi", &TaskModel::rank_hi);
  py::class_<DellaModel>(m, "DellaModel", "A model of a DELLA job: its input and MAGPRUNE's p.")
      .def(py::init([](const JobInput& input, double density, double epsilon) {
             // The floor density - epsilon is rounded to fp32 once, from fp64.
             return DellaModel{input, static_cast<float>(density), static_cast<float>(epsilon),
                               static_cast<float>(density - epsilon)};
           }),
           py::arg("input"), py::arg("density"), py::arg("epsilon"),
           "input (its weight is the model's w_k), density and epsilon of the keep "
           "probabilities [density - epsilon, density + epsilon].")
      .def_readonly("input", &DellaModel::input)
      .def_readonly("density", &DellaModel::density)
      .def_readonly("epsilon", &DellaModel::epsilon);
}

}  // namespace ladle
