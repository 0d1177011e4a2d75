// The runtime's module tree. Modules are plain C++ objects (no torch::nn): each knows its type
// key, its checkpoint prefix, its children and the parameters it reads. Structure is built once
// from config.json; weights come and go: load() reads a subtree's parameters from a WeightSource
// (checking shapes), release() drops them, so a model runs with one layer resident at a time.
#pragma once

#include <moeq/runtime/weight_source.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::runtime {

// Where and in which dtype resident weights live (the compute placement).
struct Placement {
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;
};

// One checkpoint tensor a module reads.
struct Parameter {
  std::string name;            // full checkpoint name, e.g. "model.layers.0.mlp.gate.weight"
  std::vector<int64_t> shape;  // the shape the checkpoint must hold
  bool required = true;        // optional parameters stay undefined when absent
  // Resident dtype when it must differ from the placement's (e.g. fp32 routing biases).
  std::optional<c10::ScalarType> dtype;
  // Undefined unless resident. It may be a read-only view of the mapped checkpoint: replace it,
  // never write to it in place.
  at::Tensor value;
  // The dtype the source stored it in, set by load(): when it equals value's dtype, value holds
  // the stored numbers exactly and quantization can read them without a second copy.
  c10::ScalarType stored_dtype = c10::ScalarType::Undefined;

  bool resident() const { return value.defined(); }
  bool holds_stored_values() const { return resident() && stored_dtype == value.scalar_type(); }
};

class Module {
 public:
  Module(std::string type, std::string name);
  virtual ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The type key: the Hugging Face class name ("MixtralSparseMoeBlock", "Qwen3MoeAttention"),
  // which adapters are registered under. A public contract: never renamed once released.
  const std::string& type() const { return type_; }
  // The checkpoint prefix of the module ("model.layers.3.mlp"), "" for the root.
  const std::string& name() const { return name_; }

  const std::vector<Module*>& children() const { return children_; }
  // This module's own parameters (not its children's).
  const std::vector<Parameter*>& parameters() const { return parameters_; }

  // Visits this module and its descendants in pre-order.
  void for_each_module(const std::function<void(Module&)>& visit);
  // Visits every parameter of the subtree.
  void for_each_parameter(const std::function<void(Parameter&)>& visit);

  // Reads the subtree's parameters from `source` to `placement`. A missing required tensor or a
  // shape mismatch is an error naming the tensor and the source; nothing stays loaded then.
  void load(WeightSource& source, const Placement& placement);
  // Drops the subtree's weights.
  void release();
  // Bytes of the subtree's resident weights.
  int64_t resident_bytes();

 protected:
  Parameter& add_parameter(std::string_view local_name,
                           std::vector<int64_t> shape,
                           bool required = true);
  // A parameter under a full checkpoint name (a tied head reads the embedding's weight).
  Parameter& add_named_parameter(std::string full_name,
                                 std::vector<int64_t> shape,
                                 bool required = true);
  template <typename M>
  M* add_child(std::unique_ptr<M> child) {
    M* raw = child.get();
    children_.push_back(raw);
    owned_.push_back(std::move(child));
    return raw;
  }
  // name() + "." + local (or local alone at the root).
  std::string child_name(std::string_view local) const;

 private:
  std::string type_;
  std::string name_;
  std::vector<Module*> children_;
  std::vector<std::unique_ptr<Module>> owned_;
  std::vector<Parameter*> parameters_;
  std::vector<std::unique_ptr<Parameter>> owned_parameters_;
};

}  // namespace moeq::runtime
