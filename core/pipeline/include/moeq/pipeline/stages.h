// PipelineStages: the stages of the layer-sequential pipeline that a hard-tier plugin may take
// over for its architecture. Every stage has a default that the easy and mid tiers use; a plugin
// registers a PipelineStages under config.json's architecture (PluginRegistrar::
// add_pipeline_stages) and overrides the stages its model needs. docs/contributing-models.md
// ("Hard tier") walks through plugins/deepseek_v3 as the worked example.
//
// ABI rules as for ModuleAdapter: virtual destructor, new virtual functions only at the end, no
// default arguments on virtual functions.
#pragma once

#include <moeq/io/hf_config.h>
#include <moeq/runtime/functional.h>
#include <moeq/runtime/weight_source.h>

#include <boost/config.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace moeq {
class ModuleAdapter;
}

namespace moeq::pipeline {

class BOOST_SYMBOL_VISIBLE PipelineStages {
 public:
  virtual ~PipelineStages();

  // One line for `moeq plugins` and `moeq inspect`.
  virtual std::string describe() const = 0;

  // 1. Source loading and renaming: what the model builder reads, computed from the checkpoint
  //    (rename a vendor's tensor names to the model's, dequantize a format the builder does not
  //    handle itself). Default: the checkpoint.
  virtual std::shared_ptr<runtime::WeightSource> source(
      const io::HfConfig& config, std::shared_ptr<runtime::WeightSource> checkpoint) const;

  // 2. Calibration routing: the adapter that attaches to a module of `module_type`; `registered`
  //    is the registry's (nullptr when none). Default: the registered one.
  virtual ModuleAdapter* adapter(const std::string& module_type, ModuleAdapter* registered) const;

  // 3. Quantization: whether a projection the recipe's rules would quantize is quantized; false
  //    leaves it in high precision (listed in the export's ignore list). `reason` is logged
  //    once per kind. Default: every projection the rules choose.
  virtual bool quantize(const std::string& module,
                        fn::ProjKind kind,
                        int64_t expert,
                        std::string& reason) const;

  // 4. Export naming: the name a tensor (or a quantized module's prefix) is written under.
  //    Default: its checkpoint name.
  virtual std::string export_name(const std::string& name) const;

  // 5. Layers to skip: a skipped decoder layer still runs (in its original precision) to produce
  //    the next layer's inputs, but is neither calibrated nor quantized; its tensors are copied
  //    through and its projections listed as ignored. Default: none.
  virtual bool skip_layer(int64_t index, const io::HfConfig& config) const;
};

}  // namespace moeq::pipeline
