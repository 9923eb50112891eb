// SumTable: see sum_table.h.
#include "sum_table.h"

#include <algorithm>

#include "common.h"
#include "safetensors.h"

namespace ladle {

uint32_t SumTable::add_shape(std::vector<uint64_t> shape) {
  shapes_.push_back(std::move(shape));
  return static_cast<uint32_t>(shapes_.size() - 1);
}

void SumTable::add_tensor(SumTensor tensor, const SumInput* inputs) {
  LADLE_CHECK(tensor.shape < shapes_.size(), ErrorKind::kValue,
              "tensor '%s': unknown shape id %u", tensor.name.c_str(), tensor.shape);
  tensors_.push_back(std::move(tensor));
  inputs_.insert(inputs_.end(), inputs, inputs + n_inputs());
}

size_t SumTable::layout(uint64_t max_shard_bytes, bool single_file, uint64_t header_split_bytes) {
  std::vector<std::vector<uint32_t>> groups(1);
  uint64_t size = 0, header = 0;
  for (uint32_t i = 0; i < tensors_.size(); ++i) {
    const SumTensor& t = tensors_[i];
    // plan.py's _header_bound: names JSON-escaped at worst 6 bytes per byte, 21
    // digits per number.
    uint64_t t_header = 6 * t.name.size() + 80 + 21 * shapes_[t.shape].size();
    if (!single_file && !groups.back().empty() &&
        (size + t.out_n_bytes() > max_shard_bytes || header + t_header > header_split_bytes)) {
      groups.emplace_back();
      size = header = 0;
    }
    groups.back().push_back(i);
    size += t.out_n_bytes();
    header += t_header;
  }
  for (uint32_t s = 0; s < groups.size(); ++s) {
    std::vector<uint32_t>& group = groups[s];
    std::stable_sort(group.begin(), group.end(), [&](uint32_t a, uint32_t b) {
      return dtype_bits(tensors_[a].out_dtype) > dtype_bits(tensors_[b].out_dtype);
    });
    uint64_t offset = 0;
    for (uint32_t i : group) {
      tensors_[i].shard = s;
      tensors_[i].offset = offset;
      offset += tensors_[i].out_n_bytes();
    }
  }
  shard_order_ = std::move(groups);
  return shard_order_.size();
}

std::string SumTable::shard_header(
    size_t shard, const std::vector<std::pair<std::string, std::string>>& metadata) const {
  std::vector<TensorEntry> entries;
  entries.reserve(shard_tensors(shard).size());
  for (uint32_t i : shard_tensors(shard)) {
    const SumTensor& t = tensors_[i];
    TensorEntry e;
    e.name = t.name;
    e.dtype = t.out_dtype;
    e.shape = shapes_[t.shape];
    e.n_elems = t.n_elems;
    e.begin = t.offset;
    e.end = t.offset + t.out_n_bytes();
    entries.push_back(std::move(e));
  }
  return serialize_header(entries, metadata);
}

const std::vector<uint32_t>& SumTable::shard_tensors(size_t shard) const {
  LADLE_CHECK(shard < n_shards(), ErrorKind::kValue, "no shard %zu", shard);
  return shard_order_[shard];
}

uint64_t SumTable::shard_data_n_bytes(size_t shard) const {
  uint64_t n = 0;
  for (uint32_t i : shard_tensors(shard)) n += tensors_[i].out_n_bytes();
  return n;
}

uint64_t SumTable::bytes_read() const {
  uint64_t n = 0;
  for (const SumTensor& t : tensors_) {
    uint64_t in_n_bytes = t.n_elems * (dtype_bits(t.in_dtype) / 8);
    for (double w : weights_)
      if (w != 0.0) n += in_n_bytes;
  }
  return n;
}

void SumTable::add_jobs(Plan& plan, size_t shard, const std::vector<uint32_t>& sources,
                        uint32_t sink, uint64_t header_n_bytes) const {
  std::vector<uint32_t> ids = shard_tensors(shard);
  std::sort(ids.begin(), ids.end());  // model order, as merge.execute adds them
  plan.jobs.reserve(plan.jobs.size() + ids.size());
  for (uint32_t i : ids) {
    const SumTensor& t = tensors_[i];
    Job job;
    job.name = t.name;
    job.op = JobOp::kWeightedSum;
    job.n_elems = t.n_elems;
    job.sink = sink;
    job.out_offset = header_n_bytes + t.offset;
    job.out_dtype = t.out_dtype;
    job.inputs.reserve(n_inputs());
    for (size_t k = 0; k < n_inputs(); ++k) {
      const SumInput& in = input(i, k);
      LADLE_CHECK(in.file < sources.size(), ErrorKind::kValue,
                  "tensor '%s': no source for file %u", t.name.c_str(), in.file);
      job.inputs.push_back(job_input(sources[in.file], in.offset, t.in_dtype, weights_[k]));
    }
    plan.jobs.push_back(std::move(job));
  }
}

}  // namespace ladle
