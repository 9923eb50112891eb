// The plan of a merge whose inputs hold the same tensors (names, dtypes and shapes):
// every output tensor is the weighted sum of the inputs' tensors of its name. It is
// kept as arrays rather than one Python object per tensor (checkpoints may hold 10^6
// tensors): bindings.cc fills it from the checkpoints' tables, it lays its tensors out
// in shards exactly as python/ladle/plan.py does, serialises their headers and adds
// one shard's jobs to a Plan at a time.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dtype.h"
#include "plan.h"

namespace ladle {

// One input tensor's bytes: which file (an index the caller maps to a source) and where.
struct SumInput {
  uint32_t file = 0;
  uint64_t offset = 0;
};

struct SumTensor {
  std::string name;
  DType in_dtype = DType::kF32;   // the same in every input
  DType out_dtype = DType::kF32;
  uint32_t shape = 0;             // index into SumTable::shapes()
  uint64_t n_elems = 0;
  uint32_t shard = 0;             // set by layout()
  uint64_t offset = 0;            // byte offset in the shard's data buffer
  uint64_t out_n_bytes() const { return n_elems * (dtype_bits(out_dtype) / 8); }
};

class SumTable {
 public:
  explicit SumTable(std::vector<double> weights) : weights_(std::move(weights)) {}

  size_t n_inputs() const { return weights_.size(); }
  const std::vector<double>& weights() const { return weights_; }
  const std::vector<std::vector<uint64_t>>& shapes() const { return shapes_; }
  const std::vector<SumTensor>& tensors() const { return tensors_; }
  const SumInput& input(size_t tensor, size_t k) const { return inputs_[tensor * n_inputs() + k]; }
  size_t n_shards() const { return shard_order_.size(); }
  // Tensor ids of shard `shard` in file order (after layout()).
  const std::vector<uint32_t>& shard_tensors(size_t shard) const;

  uint32_t add_shape(std::vector<uint64_t> shape);
  // `inputs` holds n_inputs() entries, in input order.
  void add_tensor(SumTensor tensor, const SumInput* inputs);

  // Assigns tensors to shards as plan.py's _assign_shards: in model order, a new shard
  // (directory outputs only) when the next tensor would pass max_shard_bytes or the
  // header bound would pass header_split_bytes; inside a shard, larger items first
  // (a stable sort, so model order survives). Returns the number of shards.
  size_t layout(uint64_t max_shard_bytes, bool single_file, uint64_t header_split_bytes);
  // Header prefix of shard `shard` (after layout()).
  std::string shard_header(size_t shard,
                           const std::vector<std::pair<std::string, std::string>>& metadata) const;
  uint64_t shard_data_n_bytes(size_t shard) const;
  // Input bytes the merge reads: those of inputs with a non-zero weight.
  uint64_t bytes_read() const;
  // Appends to `plan` the weighted-sum job of every tensor of `shard`, in model order;
  // sources[f] is the plan's source of file f, header_n_bytes the shard's header size.
  void add_jobs(Plan& plan, size_t shard, const std::vector<uint32_t>& sources, uint32_t sink,
                uint64_t header_n_bytes) const;

 private:
  std::vector<double> weights_;
  std::vector<std::vector<uint64_t>> shapes_;
  std::vector<SumTensor> tensors_;
  std::vector<SumInput> inputs_;                   // n_inputs() per tensor
  std::vector<std::vector<uint32_t>> shard_order_;  // per shard: tensor ids in file order
};

}  // namespace ladle
